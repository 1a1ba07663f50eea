"""Export a trained TapFinger network as a program with a plain-tensor interface.

Why not export `TapFingerNet` as it is: `torch.jit.script` no longer handles PyG's GAT layers, and
`torch.export` of the encoder traces but is silently wrong. `Encoder.forward` drops empty vertex
types and edge types with Python `if`s on tensor sizes, and HeteroConv then adds no bias for an
absent edge type; the tracer evaluates those `if`s once, for the example's sizes, so a program
traced with running tasks adds the running->node bias in every round, including rounds with no
running task (checked: errors of 0.3 in the node embeddings with trained biases).

So `PolicyModule` runs the SAME computation with plain torch ops and the trained parameters
(shared, not copied): a GATv2 message passing with index_select / index_add / scatter_reduce in
PyG's order of operations, a 0/1 factor on each edge type's bias standing for "this edge type has
edges", and the model's own heads through `agents.learned.actor.decide` (greedy). Every size is
dynamic (clusters, nodes, pending and running tasks, edges, deciding agents, window, node slots).
`verify_export` compares the written file with the eager model on real rounds of the scenario.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agents.exported import (FORMAT, INPUT_NAMES, METADATA_KEY, OUTPUT_NAMES, PT2_EXTRA_FILE, ExportedPolicyError,
                             decision_feeds, expected_layout, feature_layout, graph_feeds, open_runner)
from agents.learned.actor import decide
from agents.learned.batch import collate, round_arrays
from agents.learned.checkpoint import load_checkpoint, read_payload, scenario_fingerprint
from agents.learned.model import EDGE_TYPES, VERTEX_TYPES, Encoder, ModelConfig, TapFingerNet
from tapfinger import __version__
from tapfinger.sim.scenario import Scenario

FORMATS = ("onnx", "pt2")
ONNX_OPSET = 18  # ScatterElements with reduction="max" needs 18


class ExportError(ExportedPolicyError):
    """Exporting failed, or the exported program does not act like the eager model."""


# --------------------------------------------------------------------------- the plain-torch network
class PlainGATv2(nn.Module):
    """PyG `GATv2Conv((H, H), C, heads, add_self_loops=False)` on a bipartite edge type, as plain ops
    on the conv's own parameters. Returns the aggregated messages without the bias: the caller adds
    it only when the edge type has edges (HeteroConv skips edge types without edges)."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        unsupported = [name for name, bad in (("share_weights", conv.share_weights), ("concat=False", not conv.concat),
                                              ("edge_dim", conv.edge_dim is not None),
                                              ("add_self_loops", conv.add_self_loops),
                                              ("residual", getattr(conv, "res", None) is not None)) if bad]
        if unsupported:
            raise ExportError(f"GATv2Conv options {unsupported} are not supported by the exporter. Fix: extend "
                              f"agents/learned/export.py:PlainGATv2 for them.")
        self.weight_l, self.bias_l = conv.lin_l.weight, conv.lin_l.bias
        self.weight_r, self.bias_r = conv.lin_r.weight, conv.lin_r.bias
        self.att, self.bias = conv.att, conv.bias
        self.heads, self.channels = int(conv.heads), int(conv.out_channels)
        self.negative_slope = float(conv.negative_slope)

    def forward(self, x_src: torch.Tensor, x_dst: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        H, C = self.heads, self.channels
        D = x_dst.shape[0]
        x_l = F.linear(x_src, self.weight_l, self.bias_l).view(-1, H, C)
        x_r = F.linear(x_dst, self.weight_r, self.bias_r).view(-1, H, C)
        src, dst = edge_index[0], edge_index[1]
        x_j = x_l.index_select(0, src)
        x = x_r.index_select(0, dst) + x_j  # PyG: x_i + x_j
        x = F.leaky_relu(x, self.negative_slope)
        # One zero row appended before the reduction and dropped after: onnxruntime's ReduceSum
        # returns a wrongly shaped result for an empty input (an edge type with no edges). The
        # real rows are reduced exactly as before.
        x = torch.cat([x, x.new_zeros(1, H, C)], dim=0)
        alpha = (x * self.att).sum(dim=-1)[:-1]  # [E, H]
        # softmax over each destination's incoming edges, as torch_geometric.utils.softmax; a -inf
        # start (not PyG's 0 with include_self=False) gives the same maxima and exports to ONNX
        amax = torch.full((D, H), float("-inf"), dtype=alpha.dtype).scatter_reduce(
            0, dst.unsqueeze(1).expand(-1, H), alpha, "amax")
        e = (alpha - amax.index_select(0, dst)).exp()
        # index_add adds edge by edge in edge order, as PyG's scatter_add: the same sums bit for bit
        denom = torch.zeros((D, H), dtype=alpha.dtype).index_add(0, dst, e) + 1e-16
        alpha = e / denom.index_select(0, dst)
        msg = x_j * alpha.unsqueeze(-1)
        out = torch.zeros((D, H, C), dtype=msg.dtype).index_add(0, dst, msg)
        return out.view(-1, H * C)


def _has_edges(edge_index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # 1.0 if the edge type has an edge, else 0.0, as a tensor: a Python `if` on the size would be
    # frozen at export time.
    return torch.ones_like(edge_index[0], dtype=dtype).sum().clamp(max=1.0)


class PlainEncoder(nn.Module):
    """`agents.learned.model.Encoder` without data-dependent Python control flow."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.inp = encoder.inp
        self.post = encoder.post
        self.norms = encoder.norms
        self.convs = nn.ModuleList(
            nn.ModuleDict({"__".join(et): PlainGATv2(hetero.convs[et]) for et in EDGE_TYPES})
            for hetero in encoder.convs)
        if encoder.convs and any(getattr(c, "aggr", "sum") != "sum" for c in encoder.convs):
            raise ExportError("only HeteroConv(aggr='sum') is supported by the exporter")

    def forward(self, x: dict[str, torch.Tensor], edges: dict[tuple[str, str, str], torch.Tensor]
                ) -> dict[str, torch.Tensor]:
        h = {k: F.relu(self.inp[k](x[k])) for k in VERTEX_TYPES}
        if self.post is not None:
            return {k: F.relu(self.post[k](v)) for k, v in h.items()}
        flags = {et: _has_edges(e, h["cluster"].dtype) for et, e in edges.items()}
        for convs, norm in zip(self.convs, self.norms):
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in VERTEX_TYPES}
            for et in EDGE_TYPES:  # HeteroConv's order, so sums add in the same order
                src, _, dst = et
                conv = convs["__".join(et)]
                parts[dst].append(conv(h[src], h[dst], edges[et]) + conv.bias * flags[et])
            # HeteroConv: one output is used as is, several are stacked and summed (an absent edge
            # type contributes exact zeros here, which leaves the sum unchanged)
            out = {k: v[0] if len(v) == 1 else torch.stack(v, dim=0).sum(dim=0) for k, v in parts.items()}
            h = {k: norm[k](h[k] + F.relu(out[k])) for k in VERTEX_TYPES}
        return h


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
        member = torch.stack([torch.arange(node_x.shape[0]), node_cluster])
        edges = {("node", "in", "cluster"): member, ("cluster", "rev_in", "node"): member.flip(0),
                 ("pending", "visible_to", "cluster"): visible_edge,
                 ("cluster", "rev_visible_to", "pending"): visible_edge.flip(0),
                 ("running", "placed_on", "node"): placed_edge, ("node", "rev_placed_on", "running"): placed_edge.flip(0)}
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
        rows = SimpleNamespace(window_row=torch.where(window_row >= 0, window_row + 1, window_row), node_row=node_row)
        masks = {"task_mask": task_mask, "node_mask": node_mask, "alloc_low": alloc_low, "alloc_high": alloc_high}
        d = decide(self.net, h, rows, agent, masks, deterministic=True, pointer=self.pointer)
        ar = torch.arange(agent.shape[0])
        prob = d.task_probs[ar, d.place + 1]  # place -1 (do nothing) is choice 0
        return d.place, d.node, d.alloc, d.task_logits, prob


# --------------------------------------------------------------------------- inputs
def feeds_to_tensors(feeds: dict[str, np.ndarray]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.ascontiguousarray(feeds[k])) for k in INPUT_NAMES)


def random_feeds(cfg: ModelConfig, N: int, nodes_per_cluster: list[int], P: int, M: int, W: int, S: int,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """A random but well-formed input of the given sizes (tracing example; size checks in tests)."""
    rng = np.random.default_rng(seed)
    R = cfg.num_resources
    dims = cfg.feature_dims()
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
    return {
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


def example_feeds(cfg: ModelConfig) -> dict[str, np.ndarray]:
    # Every dynamic size distinct and at least 2: torch.export specialises sizes 0 and 1, and
    # equal example sizes could be mistaken for a constraint between them.
    return random_feeds(cfg, N=3, nodes_per_cluster=[2, 3, 2], P=9, M=5, W=11, S=2, seed=1)


def dynamic_shapes() -> dict[str, dict[int, object]]:
    from torch.export import Dim

    N, NT, NN = Dim("clusters", min=1), Dim("nodes", min=1), Dim("node_slots", min=1)
    P, M = Dim("pending", min=0), Dim("running", min=0)
    EV, EP = Dim("visible_edges", min=0), Dim("placed_edges", min=0)
    S, W = Dim("agents", min=1), Dim("window", min=1)
    return {"cluster_x": {0: N}, "node_x": {0: NT}, "pending_x": {0: P}, "running_x": {0: M},
            "node_cluster": {0: NT}, "visible_edge": {1: EV}, "placed_edge": {1: EP},
            "window_row": {0: N, 1: W}, "node_row": {0: N, 1: NN}, "agent": {0: S},
            "task_mask": {0: S, 1: W + 1}, "node_mask": {0: S, 1: W, 2: NN}, "alloc_low": {0: S, 1: W},
            "alloc_high": {0: S, 1: NN}}


def export_program(net: TapFingerNet, pointer: bool = True) -> torch.export.ExportedProgram:
    module = PolicyModule(net.eval(), pointer=pointer).eval()
    args = feeds_to_tensors(example_feeds(net.cfg))
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=dynamic_shapes(), strict=False)


# --------------------------------------------------------------------------- eager reference
@torch.no_grad()
def eager_outputs(net: TapFingerNet, arrays: dict[str, np.ndarray], agents: list[int],
                  masks: list[dict[str, np.ndarray]], pointer: bool = True) -> list[np.ndarray]:
    """What the eager model (PyG encoder, `Planner`'s code path) outputs for the same inputs."""
    batch = collate([arrays])
    h = net.encode(batch)
    m = {k: torch.as_tensor(v) for k, v in decision_feeds(agents, masks).items() if k != "agent"}
    d = decide(net, h, batch, torch.as_tensor(agents, dtype=torch.long), m, deterministic=True, pointer=pointer)
    prob = d.task_probs[torch.arange(len(agents)), d.place + 1]
    return [t.numpy() for t in (d.place, d.node, d.alloc, d.task_logits, prob)]


def eager_outputs_for_feeds(net: TapFingerNet, feeds: dict[str, np.ndarray], pointer: bool = True
                            ) -> list[np.ndarray]:
    """`eager_outputs` for program inputs (e.g. `random_feeds`), through the model's own collate path."""
    arrays = {k: feeds[k] for k in ("cluster_x", "node_x", "pending_x", "running_x", "node_cluster",
                                    "visible_edge", "placed_edge", "window_row")}
    arrays["node_id"] = feeds["node_row"]  # one round: node rows are global node ids
    n = feeds["cluster_x"].shape[0]
    for k in ("task_mask", "node_mask", "alloc_low", "alloc_high"):  # collate wants them; decide gets its own
        arrays[k] = np.zeros((n,) + feeds[k].shape[1:], dtype=np.int64)
    agents = feeds["agent"].tolist()
    masks = [{k: feeds[k][j] for k in ("task_mask", "node_mask", "alloc_low", "alloc_high")} for j in range(len(agents))]
    return eager_outputs(net, arrays, agents, masks, pointer=pointer)


def compare_outputs(got: list[np.ndarray], want: list[np.ndarray], atol: float = 1e-4) -> str | None:
    """None if the greedy choices are equal and the logits close, else what differs. Node and
    allocation are compared where a task is started (for "do nothing" they are unused)."""
    started = want[0] >= 0
    for name, g, w in zip(OUTPUT_NAMES, got, want):
        if name in ("node", "alloc"):
            g, w = g[started], w[started]
        if name in ("place", "node", "alloc"):
            if not np.array_equal(g, w):
                return f"{name}: exported {g.tolist()} vs eager {w.tolist()}"
        else:
            live = w > -1e8  # masked logits are -1e9 in both; compare the others
            if g.shape != w.shape or not np.allclose(np.where(live, g, 0), np.where(live, w, 0), atol=atol, rtol=1e-4):
                return f"{name}: max difference {np.abs(np.where(live, g - w, 0)).max():.3g}"
    return None


@torch.no_grad()
def greedy_mismatch(net: TapFingerNet, arrays: dict[str, np.ndarray], agents: list[int],
                    masks: list[dict[str, np.ndarray]], got: list[np.ndarray], pointer: bool = True,
                    tol: float = 1e-5) -> str | None:
    """None if every choice of the exported program (task, then node, then each amount) is an argmax
    of the eager model's logits given the program's earlier choices, up to `tol`, and its task logits
    are close to the eager ones; else what differs.

    Why not plain equality: two choices the network cannot tell apart (tasks of one type, age and
    visibility; idle nodes of one size) get the same logit up to float rounding, which PyTorch's and
    onnxruntime's kernels do differently, so each may pick another one of the twins."""
    batch = collate([arrays])
    h = net.encode(batch)
    rows = torch.as_tensor(agents, dtype=torch.long)
    m = {k: torch.as_tensor(v) for k, v in decision_feeds(agents, masks).items() if k != "agent"}
    place, node, alloc = (torch.as_tensor(a) for a in got[:3])
    ar = torch.arange(len(agents))

    started = place >= 0  # node and amounts of a "do nothing" choice are unused

    def not_greedy(logits: torch.Tensor, pick: torch.Tensor, what: str, only: torch.Tensor | None = None
                   ) -> str | None:
        best = logits.max(dim=1).values
        chosen = logits[ar, pick]
        worse = chosen < best - tol * (1 + best.abs())
        bad = torch.nonzero(worse if only is None else worse & only).flatten()
        if bad.numel():
            j = int(bad[0])
            return (f"{what} of agent {agents[j]}: exported choice {int(pick[j])} has eager logit "
                    f"{float(chosen[j]):.6g}, the eager maximum is {float(best[j]):.6g}")
        return None

    t_logits = net.task_logits(h, batch, rows, m["task_mask"], pointer=pointer)
    live = t_logits > -1e8
    got_logits = torch.as_tensor(got[3])
    if got_logits.shape != t_logits.shape or not torch.allclose(
            torch.where(live, got_logits, 0), torch.where(live, t_logits, 0), atol=1e-4, rtol=1e-4):
        return "task logits differ from the eager model's by more than 1e-4"
    problem = not_greedy(t_logits, place + 1, "task")
    if problem:
        return problem
    at = place.clamp(min=0)
    problem = not_greedy(net.node_logits(h, batch, rows, at, m["node_mask"][ar, at]), node, "node", started)
    if problem:
        return problem
    z = net.alloc_context(h, batch, rows, at, node)
    low, high = m["alloc_low"][ar, at], m["alloc_high"][ar, node]
    for r in range(alloc.shape[1]):
        logits = net.alloc_logits(z, r, low[:, r], high[:, r], [alloc[:, q] for q in range(r)])
        problem = not_greedy(logits, alloc[:, r], f"amount of resource {r}", started)
        if problem:
            return problem
    return None


# --------------------------------------------------------------------------- writing files
def export_metadata(scenario: Scenario, cfg: ModelConfig, acting: dict, fmt: str, checkpoint: Path,
                    payload: dict) -> dict:
    return {
        "format": FORMAT,
        "scenario": scenario.name,
        "scenario_fingerprint": scenario_fingerprint(scenario),
        "feature_layout": expected_layout(scenario),
        "acting": {k: acting[k] for k in ("multi_task", "max_sequence", "bayes", "pointer") if k in acting},
        "model_config": cfg.to_dict(),
        "tapfinger_version": __version__,
        "program": {"format": fmt, "torch": str(torch.__version__),
                    "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "checkpoint": {"file": checkpoint.name, "step": int(payload.get("step", 0)),
                       "versions": payload.get("versions", {})},
    }


def _tmp_path(out: Path, suffix: str) -> Path:
    # torch.export.save / load want a name ending in .pt2
    return out.with_name(f".{out.name}.{os.getpid()}.tmp{suffix}")


def write_pt2(program: torch.export.ExportedProgram, out: Path, meta: dict) -> Path:
    tmp = _tmp_path(out, ".pt2")
    torch.export.save(program, str(tmp), extra_files={PT2_EXTRA_FILE: json.dumps(meta)})
    return tmp


def write_onnx(program: torch.export.ExportedProgram, out: Path, meta: dict) -> Path:
    import warnings

    tmp = _tmp_path(out, ".onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and opset notes
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=ONNX_OPSET,
                                         input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                                         verbose=False)
    props = onnx_program.model.metadata_props
    props[METADATA_KEY] = json.dumps(meta)
    # flat copies for tools that show metadata_props (Netron, onnx.load)
    props["tapfinger_scenario"] = meta["scenario"]
    props["tapfinger_scenario_fingerprint"] = meta["scenario_fingerprint"]
    props["tapfinger_version"] = meta["tapfinger_version"]
    onnx_program.save(str(tmp), external_data=False)
    return tmp


# --------------------------------------------------------------------------- verification
def sample_rounds(scenario: Scenario, net: TapFingerNet, acting: dict, seed: int = 0, max_rounds: int = 40
                  ) -> list[dict[str, np.ndarray]]:
    """Observations of rounds (with deciding agents) of one greedy episode of the eager policy."""
    from agents.learned.acting import ActingOptions
    from agents.learned.policy import Planner
    from envs.observations import build_observations
    from tapfinger.sim.engine import Engine

    planner = Planner(net, scenario, ActingOptions(**acting))
    eng = Engine(scenario)
    eng.reset(seed)
    out = []
    while not eng.done and len(out) < max_rounds:
        obs = build_observations(eng)
        if obs["task_mask"][:, 1:].any():
            out.append(obs)
        a, _ = planner.act(obs, deterministic=True)
        eng.play_round(a.task, a.node, a.alloc)
    return out


def verify_export(path: Path, fmt: str, scenario: Scenario, net: TapFingerNet, acting: dict,
                  rounds: list[dict[str, np.ndarray]]) -> int:
    """Run the written file through `agents.exported` on real rounds (`sample_rounds`: sizes vary
    from round to round) and compare with the eager model; returns the number of rounds checked."""
    runner = open_runner(path, fmt, scenario)
    pointer = bool(acting.get("pointer", True))
    for r, obs in enumerate(rounds):
        agents = [i for i in range(obs["task_mask"].shape[0]) if obs["task_mask"][i, 1:].any()]
        masks = [{k: obs[k][i] for k in ("task_mask", "node_mask", "alloc_low", "alloc_high")} for i in agents]
        got = runner.run({**graph_feeds(obs, scenario), **decision_feeds(agents, masks)})
        problem = greedy_mismatch(net, round_arrays(obs, scenario), agents, masks, got, pointer=pointer)
        if problem:
            raise ExportError(f"the exported {fmt} program differs from the eager model on round {r} of a "
                              f"verification episode ({problem}). Fix: report it with the checkpoint; use the "
                              f"checkpoint itself (policy `tapfinger`) meanwhile.")
    return len(rounds)


# --------------------------------------------------------------------------- entry point
@dataclass
class ExportResult:
    path: Path
    metadata: dict
    verified_rounds: int


def export_checkpoint(checkpoint: str | Path, out: str | Path, fmt: str, scenario: Scenario | None = None,
                      verify: bool = True) -> ExportResult:
    """Load a checkpoint, export it to `out` (written atomically), and check the file against the eager model."""
    return export_files(checkpoint, {fmt: out}, scenario=scenario, verify=verify)[0]


def export_files(checkpoint: str | Path, outs: dict[str, str | Path], scenario: Scenario | None = None,
                 verify: bool = True) -> list[ExportResult]:
    """`export_checkpoint` for several formats ({"onnx": path, "pt2": path}) from one traced program."""
    from tapfinger.sim.scenario import ScenarioError, load_scenario

    for fmt in outs:
        if fmt not in FORMATS:
            raise ExportError(f"unknown export format {fmt!r}. Fix: use one of {', '.join(FORMATS)}.")
    checkpoint = Path(checkpoint)
    payload = read_payload(checkpoint)
    if scenario is None:
        try:
            scenario = load_scenario(payload["scenario"])
        except (ScenarioError, FileNotFoundError, ValueError):
            raise ExportError(f"checkpoint {checkpoint} was trained on scenario '{payload['scenario']}', which is not "
                              f"a built-in name. Fix: pass --scenario FILE.toml (the scenario it was trained on).") from None
    ckpt = load_checkpoint(checkpoint, scenario)
    net = ckpt.net.eval()
    acting = {"multi_task": False, "max_sequence": 4, "bayes": True, "pointer": True, **ckpt.acting}
    dims = net.cfg.feature_dims()
    layout = feature_layout(scenario)
    if any(len(layout[k]) != dims[k] for k in dims):  # graph.py and the model disagree: a bug, not user error
        raise ExportError(f"feature layout {({k: len(v) for k, v in layout.items()})} does not match the model's "
                          f"input sizes {dims}. Fix: update agents/exported.py:feature_layout.")
    if not acting["pointer"]:
        raise ExportError(f"checkpoint {checkpoint} acts with the pointer ablation (pointer=False): its task logits "
                          f"are all equal, so a greedy choice is a tie that each runtime breaks its own way. Fix: "
                          f"evaluate it as the policy `tapfinger` with --checkpoint {checkpoint}.")
    try:
        program = export_program(net, pointer=bool(acting["pointer"]))
    except Exception as exc:
        raise ExportError(f"tracing {checkpoint} with torch.export failed ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}). Fix: report it with the checkpoint; use the "
                          f"checkpoint itself (policy `tapfinger`) meanwhile.") from exc
    rounds = sample_rounds(scenario, net, acting) if verify else []
    results = []
    for fmt, out in outs.items():
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        meta = export_metadata(scenario, net.cfg, acting, fmt, checkpoint, payload)
        try:
            tmp = write_onnx(program, out, meta) if fmt == "onnx" else write_pt2(program, out, meta)
        except Exception as exc:
            raise ExportError(f"writing {checkpoint} as {fmt} failed ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:300]}). Fix: try the other format.") from exc
        try:
            if verify:
                verify_export(tmp, fmt, scenario, net, acting, rounds)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
        results.append(ExportResult(out, meta, len(rounds)))
    return results
