"""The paper's simple baselines: `random` and `min` (DESIGN.md, "Heuristics to compare against")."""

from __future__ import annotations

import numpy as np

from agents.base import Policy
from agents.heuristics.common import alloc_bounds, fitting_nodes, occupied_places
from envs.actions import RoundActions


class RandomPolicy(Policy):
    """The authors' `random` rule (DESIGN.md, "Heuristics to compare against").

    Agents act in index order. Each picks a uniformly random occupied window place; the pick
    claims that task for the round, so a later agent that picks the same task passes (the lowest
    index wins a conflict, and here even a pick that ends in "nothing" keeps it). If the task
    cannot start (its minimum fits no node, or the cluster runs its maximum), the agent passes.
    Otherwise, on a uniformly random node where the minimum fits (the reference clusters have one
    node), it draws one outcome uniformly from {nothing} ∪ the box [minimum .. min(grid max, free)]
    of all resources jointly: "nothing" is its only way to pass, 1 in (box size + 1), e.g. 1 in
    129 on the trace grid (16, 8) at minimum (1, 1) — not 1 in (startable tasks + 1)."""

    name = "random"

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        N, R = obs["alloc_low"].shape[0], obs["alloc_low"].shape[2]
        out = RoundActions.nothing(N, R)
        claimed: set[int] = set()
        for i in range(N):
            places = occupied_places(obs, i)
            if not len(places):
                continue
            place = int(places[self.rng.integers(len(places))])
            task = int(obs["window_id"][i, place])
            taken = task in claimed
            claimed.add(task)
            if taken or not obs["task_mask"][i, place + 1]:
                continue
            nodes = fitting_nodes(obs, i, place)
            node = int(nodes[self.rng.integers(len(nodes))])
            low, high = alloc_bounds(obs, i, place, node)
            sides = high - low + 1
            if (sides < 1).any():
                continue  # a minimum above the grid maximum: the box is empty, nothing fits
            size = int(np.prod(sides))
            pick = int(self.rng.integers(size + 1))
            if pick == size:
                continue  # drew "nothing"
            out.task[i], out.node[i] = place, node
            out.alloc[i] = low + np.array(np.unravel_index(pick, sides), dtype=np.int64)
        return out


class MinPolicy(Policy):
    """A random window task at exactly its minimum, or pass if it does not fit — what a
    request-based scheduler such as the Kubernetes default does."""

    name = "min"

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        N, R = obs["alloc_low"].shape[0], obs["alloc_low"].shape[2]
        out = RoundActions.nothing(N, R)
        for i in range(N):
            places = occupied_places(obs, i)
            if not len(places):
                continue
            place = int(places[self.rng.integers(len(places))])
            if not obs["task_mask"][i, place + 1]:
                continue  # does not fit anywhere (or the cluster is full): pass
            nodes = fitting_nodes(obs, i, place)
            out.task[i], out.node[i] = place, int(nodes[0])
            out.alloc[i] = obs["alloc_low"][i, place]
        return out
