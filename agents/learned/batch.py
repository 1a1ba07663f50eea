"""Collate rounds (batched observations of all agents) into one disjoint graph of tensors.

Each round contributes its `envs.graph.graph_arrays`; indices are offset so that many rounds
form one big graph, and per-agent tensors (masks, window and node rows) are stacked, one row
per (round, agent). The model and the PPO update both consume this structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.learned.masks import MASK_KEYS
from envs.graph import graph_arrays
from tapfinger.sim.scenario import Scenario



@dataclass
class GraphBatch:
    x: dict[str, torch.Tensor]  # cluster / node / pending / running features
    edges: dict[tuple[str, str, str], torch.Tensor]
    window_row: torch.Tensor  # [A, W] row in x["pending"], -1 = empty place
    node_row: torch.Tensor  # [A, Nn] row in x["node"], -1 = padding
    agent_row: torch.Tensor  # [A] row in x["cluster"]
    round_of_agent: torch.Tensor  # [A] which round (0..B-1)
    cluster_round: torch.Tensor  # [B*N] which round each cluster row belongs to
    masks: dict[str, torch.Tensor]  # task_mask [A, W+1], node_mask [A, W, Nn], alloc_low, alloc_high
    num_rounds: int

    def to(self, device: torch.device) -> "GraphBatch":
        mv = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return GraphBatch(mv(self.x), mv(self.edges), self.window_row.to(device), self.node_row.to(device),
                          self.agent_row.to(device), self.round_of_agent.to(device),
                          self.cluster_round.to(device), mv(self.masks), self.num_rounds)


def round_arrays(obs: dict[str, np.ndarray], scenario: Scenario) -> dict[str, np.ndarray]:
    """What one round needs to be stored: its graph arrays plus the per-agent masks and node ids."""
    g = graph_arrays(obs, scenario)
    for k in MASK_KEYS:
        g[k] = obs[k]
    g["node_id"] = obs["node_id"]
    return g


def collate(rounds: list[dict[str, np.ndarray]]) -> GraphBatch:
    counts = {k: np.array([r[f"{k}_x"].shape[0] for r in rounds]) for k in ("cluster", "node", "pending", "running")}
    offs = {k: np.concatenate([[0], np.cumsum(v)[:-1]]) for k, v in counts.items()}
    x = {k: torch.from_numpy(np.concatenate([r[f"{k}_x"] for r in rounds])) for k in counts}
    vis = np.concatenate([r["visible_edge"] + [[offs["pending"][i]], [offs["cluster"][i]]]
                          for i, r in enumerate(rounds)], axis=1)
    member = np.concatenate([np.stack([np.arange(len(r["node_cluster"])) + offs["node"][i],
                                       r["node_cluster"] + offs["cluster"][i]]) for i, r in enumerate(rounds)], axis=1)
    placed = np.concatenate([r["placed_edge"] + [[offs["running"][i]], [offs["node"][i]]]
                             for i, r in enumerate(rounds)], axis=1)

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a)).long()

    edges = {("node", "in", "cluster"): t(member), ("cluster", "rev_in", "node"): t(member[::-1]),
             ("pending", "visible_to", "cluster"): t(vis), ("cluster", "rev_visible_to", "pending"): t(vis[::-1]),
             ("running", "placed_on", "node"): t(placed), ("node", "rev_placed_on", "running"): t(placed[::-1])}
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
    return GraphBatch(x, edges, t(window_row), t(node_row), t(agent_row), t(round_of_agent), t(round_of_agent),
                      masks, len(rounds))
