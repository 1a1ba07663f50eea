"""Collate rounds (batched observations of all agents) into one disjoint graph of tensors.

Each round contributes its `round_arrays` (`envs.graph.graph_arrays` plus masks and node ids);
indices are offset so that many rounds form one big graph, and per-agent tensors (masks, window
and node rows) are stacked, one row per (round, agent). The model and the PPO update both
consume this structure. The edge and vertex types are `envs.graph`'s layout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.learned.acting import HINT_KEYS, round_arrays
from agents.learned.masks import MASK_KEYS
from envs.graph import VERTEX_TYPES, EdgeType, forward_edges, reverse

__all__ = ["GraphBatch", "collate", "round_arrays"]  # round_arrays: numpy, in agents.learned.acting


@dataclass
class GraphBatch:
    x: dict[str, torch.Tensor]  # cluster / node / pending / running features
    edges: dict[EdgeType, torch.Tensor]
    window_row: torch.Tensor  # [A, W] row in x["pending"], -1 = empty place
    node_row: torch.Tensor  # [A, Nn] row in x["node"], -1 = padding
    agent_row: torch.Tensor  # [A] row in x["cluster"]
    round_of_agent: torch.Tensor  # [A] which round (0..B-1)
    cluster_round: torch.Tensor  # [B*N] which round each cluster row belongs to
    masks: dict[str, torch.Tensor]  # task_mask [A, W+1], node_mask [A, W, Nn], alloc_low, alloc_high
    num_rounds: int
    progress_x: torch.Tensor | None = None  # [B, 2] episode progress of each round (training records only)
    hints: dict[str, torch.Tensor] | None = None  # greedy's proposals (acting.HINT_KEYS), one row per agent

    def to(self, device: torch.device) -> "GraphBatch":
        mv = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return GraphBatch(mv(self.x), mv(self.edges), self.window_row.to(device), self.node_row.to(device),
                          self.agent_row.to(device), self.round_of_agent.to(device),
                          self.cluster_round.to(device), mv(self.masks), self.num_rounds,
                          None if self.progress_x is None else self.progress_x.to(device),
                          None if self.hints is None else mv(self.hints))


def collate(rounds: list[dict[str, np.ndarray]]) -> GraphBatch:
    counts = {k: np.array([r[f"{k}_x"].shape[0] for r in rounds]) for k in VERTEX_TYPES}
    offs = {k: np.concatenate([[0], np.cumsum(v)[:-1]]) for k, v in counts.items()}
    x = {k: torch.from_numpy(np.concatenate([r[f"{k}_x"] for r in rounds])) for k in counts}

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).long()

    per_round = [forward_edges(r) for r in rounds]
    edges = {}
    for et in per_round[0]:  # each (src, rel, dst): source rows offset by src's counts, destinations by dst's
        src, _, dst = et
        e = np.concatenate([p[et] + [[offs[src][i]], [offs[dst][i]]] for i, p in enumerate(per_round)], axis=1)
        edges[et] = t(e)
        edges[reverse(et)] = t(e[::-1])
    window_row = np.concatenate([np.where(r["window_row"] >= 0, r["window_row"] + offs["pending"][i], -1)
                                 for i, r in enumerate(rounds)])
    # graph_arrays orders node rows by global node id, so a node's row is its id plus the offset
    node_row = np.concatenate([np.where(r["node_id"] >= 0, r["node_id"] + offs["node"][i], -1)
                               for i, r in enumerate(rounds)])
    n_agents = np.array([r["cluster_x"].shape[0] for r in rounds])
    agent_row = np.arange(n_agents.sum())
    round_of_agent = np.repeat(np.arange(len(rounds)), n_agents)
    masks = {k: t(np.concatenate([r[k] for r in rounds])) for k in MASK_KEYS}
    masks["task_mask"] = masks["task_mask"].bool()
    masks["node_mask"] = masks["node_mask"].bool()
    progress = torch.from_numpy(np.concatenate([r["progress_x"] for r in rounds])) \
        if all("progress_x" in r for r in rounds) else None
    # rounds planned with greedy hints carry them (RoundPlanner(greedy_hint=True)); None otherwise
    hints = {k: torch.from_numpy(np.concatenate([r[k] for r in rounds])) for k in HINT_KEYS} \
        if all(HINT_KEYS[0] in r for r in rounds) else None
    return GraphBatch(x, edges, t(window_row), t(node_row), t(agent_row), t(round_of_agent), t(round_of_agent),
                      masks, len(rounds), progress, hints)
