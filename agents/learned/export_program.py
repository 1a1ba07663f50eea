"""The exported program: `PolicyModule` (plain tensors in, greedy decisions out) and its tracing.

`PolicyModule` runs the plain-torch encoder (`agents.learned.plain_encoder`) and then the model's
own heads through `agents.learned.actor.decide` (greedy, with the shared tie rule), so the
exported graph computes what the eager model computes. Its interface is
`agents.export_format.INPUT_NAMES` / `OUTPUT_NAMES` (`HintedPolicyModule`: plus `HINT_INPUTS`, for
a network with greedy hints; a declining network outputs `DECLINE_OUTPUTS` too and takes a
task_mask of 2W+1 choices); every size is dynamic (clusters, nodes, pending and running tasks,
edges, deciding agents, window, node slots).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from agents.export_format import HINT_INPUTS, input_names
from agents.learned.actor import decide
from agents.learned.model import ModelConfig, TapFingerNet
from agents.learned.plain_encoder import PlainEncoder
from envs.graph import FORWARD_EDGES, feature_dims, reverse


class PolicyModule(nn.Module):
    """Plain tensors in (INPUT_NAMES), greedy decisions out (OUTPUT_NAMES): one round, one graph."""

    def __init__(self, net: TapFingerNet, pointer: bool = True):
        super().__init__()
        self.net = net
        self.encoder = PlainEncoder(net.encoder)
        self.pointer = bool(pointer)

    def forward(self, cluster_x: torch.Tensor, node_x: torch.Tensor, pending_x: torch.Tensor,
                running_x: torch.Tensor, node_cluster: torch.Tensor, visible_edge: torch.Tensor,
                placed_edge: torch.Tensor, window_row: torch.Tensor, node_row: torch.Tensor, agent: torch.Tensor,
                task_mask: torch.Tensor, node_mask: torch.Tensor, alloc_low: torch.Tensor, alloc_high: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        return self.decide(cluster_x, node_x, pending_x, running_x, node_cluster, visible_edge, placed_edge,
                           window_row, node_row, agent, task_mask, node_mask, alloc_low, alloc_high)

    def decide(self, cluster_x: torch.Tensor, node_x: torch.Tensor, pending_x: torch.Tensor,
               running_x: torch.Tensor, node_cluster: torch.Tensor, visible_edge: torch.Tensor,
               placed_edge: torch.Tensor, window_row: torch.Tensor, node_row: torch.Tensor, agent: torch.Tensor,
               task_mask: torch.Tensor, node_mask: torch.Tensor, alloc_low: torch.Tensor, alloc_high: torch.Tensor,
               hints: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, ...]:
        # the graph layout's edge types (envs.graph), as `envs.graph.forward_edges` builds them
        arrays = {"node_cluster": torch.stack([torch.arange(node_x.shape[0]), node_cluster]),
                  "visible_edge": visible_edge, "placed_edge": placed_edge}
        edges = {}
        for et, key in FORWARD_EDGES:
            edges[et] = arrays[key]
            edges[reverse(et)] = arrays[key].flip(0)
        h = self.encoder({"cluster": cluster_x, "node": node_x, "pending": pending_x, "running": running_x}, edges)
        hc = h["cluster"]
        # TapFingerNet.encode for one round: PyG's scatter "mean" over all clusters, same op order
        index = torch.zeros(hc.shape[0], dtype=torch.int64)
        count = hc.new_zeros(1).scatter_add(0, index, hc.new_ones(hc.shape[0])).clamp(min=1)
        glob = hc.new_zeros(1, hc.shape[1]).scatter_add(0, index.unsqueeze(1).expand_as(hc), hc) / count.unsqueeze(1)
        h["agent"] = self.net.ctx(torch.cat([hc, glob.index_select(0, index)], dim=-1))
        # A zero row in front of the pending embeddings, so that the model's own window lookup
        # (which clamps -1 to row 0 and zeroes empty places) also works with no pending task.
        h["pending"] = torch.cat([h["pending"].new_zeros(1, h["pending"].shape[1]), h["pending"]], dim=0)
        rows = SimpleNamespace(window_row=torch.where(window_row >= 0, window_row + 1, window_row), node_row=node_row,
                               hints=hints)  # per cluster, as the eager batch's per-agent rows
        masks = {"task_mask": task_mask, "node_mask": node_mask, "alloc_low": alloc_low, "alloc_high": alloc_high}
        d = decide(self.net, h, rows, agent, masks, deterministic=True, pointer=self.pointer)
        ar = torch.arange(agent.shape[0])
        prob = d.task_probs[ar, d.choice]  # do nothing is choice 0
        if d.decline is not None:  # a declining network (DECLINE_OUTPUTS)
            return d.place, d.node, d.alloc, d.task_logits, prob, d.decline
        return d.place, d.node, d.alloc, d.task_logits, prob


class HintedPolicyModule(PolicyModule):
    """`PolicyModule` of a network with greedy hints: greedy's proposal for every cluster
    (`HINT_INPUTS`) comes after the other inputs."""

    def forward(self, cluster_x: torch.Tensor, node_x: torch.Tensor, pending_x: torch.Tensor,
                running_x: torch.Tensor, node_cluster: torch.Tensor, visible_edge: torch.Tensor,
                placed_edge: torch.Tensor, window_row: torch.Tensor, node_row: torch.Tensor, agent: torch.Tensor,
                task_mask: torch.Tensor, node_mask: torch.Tensor, alloc_low: torch.Tensor, alloc_high: torch.Tensor,
                hint_task: torch.Tensor, hint_node: torch.Tensor, hint_alloc: torch.Tensor
                ) -> tuple[torch.Tensor, ...]:
        hints = {"hint_task": hint_task, "hint_node": hint_node, "hint_alloc": hint_alloc}
        return self.decide(cluster_x, node_x, pending_x, running_x, node_cluster, visible_edge, placed_edge,
                           window_row, node_row, agent, task_mask, node_mask, alloc_low, alloc_high, hints)


def policy_module(net: TapFingerNet, pointer: bool = True) -> PolicyModule:
    """The program module of `net`: with greedy's proposals as inputs when the network takes them."""
    return (HintedPolicyModule if net.cfg.greedy_hint else PolicyModule)(net, pointer=pointer)


def feeds_to_tensors(feeds: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    names = input_names(HINT_INPUTS[0] in feeds)
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in names)


def random_feeds(cfg: ModelConfig, N: int, nodes_per_cluster: list[int], P: int, M: int, W: int, S: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A random but well-formed input of the given sizes (tracing example; size checks in tests)."""
    rng = np.random.default_rng(seed)
    R = cfg.num_resources
    dims = feature_dims(cfg.num_types, cfg.num_resources, cfg.node_faults)
    NN = max(nodes_per_cluster)
    NT = sum(nodes_per_cluster)
    node_cluster = np.repeat(np.arange(N), nodes_per_cluster)
    node_row = np.full((N, NN), -1, dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(nodes_per_cluster)[:-1]])
    for c, n in enumerate(nodes_per_cluster):
        node_row[c, :n] = start[c] + np.arange(n)
    window_row = np.full((N, W), -1, dtype=np.int64)
    for c in range(N):
        k = int(rng.integers(0, min(W, P) + 1))
        window_row[c, :k] = rng.choice(P, size=k, replace=False)
    for p in range(P):  # every pending task is visible to a cluster
        if not (window_row == p).any():
            c = int(rng.integers(N))
            free = np.flatnonzero(window_row[c] < 0)
            window_row[c, free[0] if free.size else 0] = p
    vis_agent, vis_place = np.nonzero(window_row >= 0)
    agents = np.sort(rng.choice(N, size=S, replace=False))
    grid = np.asarray(cfg.grid_max)
    low = rng.integers(0, np.maximum(grid // 2, 1) + 1, size=(S, W, R))
    # masks as the environment makes them: a place is allowed only if it holds a task that fits
    # on some real node (all-masked rows would make every runtime's argmax an arbitrary tie)
    node_mask = ((rng.random((S, W, NN)) < 0.8) & (window_row[agents][:, :, None] >= 0)
                 & (node_row[agents][:, None, :] >= 0))
    task_mask = np.concatenate([np.ones((S, 1), dtype=bool),
                                (rng.random((S, W)) < 0.8) & node_mask.any(axis=2)], axis=1)
    if cfg.decline:  # the decline choices: about half of the occupied places
        task_mask = np.concatenate([task_mask, (rng.random((S, W)) < 0.5) & (window_row[agents] >= 0)], axis=1)
    feeds = {
        "cluster_x": rng.random((N, dims["cluster"]), dtype=np.float32),
        "node_x": rng.random((NT, dims["node"]), dtype=np.float32),
        "pending_x": rng.random((P, dims["pending"]), dtype=np.float32),
        "running_x": rng.random((M, dims["running"]), dtype=np.float32),
        "node_cluster": node_cluster.astype(np.int64),
        "visible_edge": np.stack([window_row[vis_agent, vis_place], vis_agent]).astype(np.int64),
        "placed_edge": np.stack([np.arange(M), rng.integers(0, NT, size=M)]).astype(np.int64),
        "window_row": window_row, "node_row": node_row, "agent": agents.astype(np.int64),
        "task_mask": task_mask, "node_mask": node_mask,
        "alloc_low": low.astype(np.int64),
        "alloc_high": rng.integers(0, grid + 1, size=(S, NN, R)).astype(np.int64),
    }
    if cfg.greedy_hint:
        feeds.update(random_hints(rng, N, W, NN, grid))
    return feeds


def random_hints(rng: np.random.Generator, N: int, W: int, NN: int, grid: np.ndarray) -> dict[str, np.ndarray]:
    """Random greedy proposals (`HINT_INPUTS`), "do nothing" for about a third of the clusters."""
    choice = rng.integers(0, W + 1, size=N) * (rng.random(N) < 0.7)
    starts = choice > 0
    task = np.zeros((N, W + 1), dtype=np.float32)
    task[np.arange(N), choice] = 1.0
    node = np.where(starts, rng.integers(0, NN, size=N), -1)
    alloc = np.where(starts[:, None], rng.integers(0, grid + 1, size=(N, len(grid))), -1)
    return {"hint_task": task, "hint_node": node.astype(np.int64), "hint_alloc": alloc.astype(np.int64)}


def example_feeds(cfg: ModelConfig) -> dict[str, np.ndarray]:
    # Every dynamic size distinct and at least 2: torch.export specialises sizes 0 and 1, and
    # equal example sizes could be mistaken for a constraint between them.
    return random_feeds(cfg, N=3, nodes_per_cluster=[2, 3, 2], P=9, M=5, W=11, S=2, seed=1)


def dynamic_shapes(greedy_hint: bool = False, decline: bool = False) -> dict[str, dict[int, object]]:
    from torch.export import Dim

    N, NT, NN = Dim("clusters", min=1), Dim("nodes", min=1), Dim("node_slots", min=1)
    P, M = Dim("pending", min=0), Dim("running", min=0)
    EV, EP = Dim("visible_edges", min=0), Dim("placed_edges", min=0)
    S, W = Dim("agents", min=1), Dim("window", min=1)
    shapes = {"cluster_x": {0: N}, "node_x": {0: NT}, "pending_x": {0: P}, "running_x": {0: M},
              "node_cluster": {0: NT}, "visible_edge": {1: EV}, "placed_edge": {1: EP},
              "window_row": {0: N, 1: W}, "node_row": {0: N, 1: NN}, "agent": {0: S},
              "task_mask": {0: S, 1: 2 * W + 1 if decline else W + 1}, "node_mask": {0: S, 1: W, 2: NN}, "alloc_low": {0: S, 1: W},
              "alloc_high": {0: S, 1: NN}}
    if greedy_hint:
        shapes.update({"hint_task": {0: N, 1: W + 1}, "hint_node": {0: N}, "hint_alloc": {0: N}})
    return shapes


def export_program(net: TapFingerNet, pointer: bool = True) -> torch.export.ExportedProgram:
    module = policy_module(net.eval(), pointer=pointer).eval()
    args = feeds_to_tensors(example_feeds(net.cfg))
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=dynamic_shapes(net.cfg.greedy_hint, net.cfg.decline),
                                   strict=False)
