"""The paper's simple baselines: `random` and `min` (DESIGN.md, "Heuristics to compare against")."""

from __future__ import annotations

import numpy as np

from agents.base import Policy
from envs.actions import RoundActions
from agents.heuristics.common import alloc_bounds, feasible_places, fitting_nodes, occupied_places


class RandomPolicy(Policy):
    """Each agent picks uniformly among passing and its startable window tasks, then a uniformly
    random node that fits and a uniformly random amount of each resource within the masks."""

    name = "random"

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        N, R = obs["alloc_low"].shape[0], obs["alloc_low"].shape[2]
        out = RoundActions.nothing(N, R)
        for i in range(N):
            places = feasible_places(obs, i)
            choice = int(self.rng.integers(len(places) + 1))
            if choice == len(places):
                continue  # pass
            place = int(places[choice])
            nodes = fitting_nodes(obs, i, place)
            node = int(nodes[self.rng.integers(len(nodes))])
            low, high = alloc_bounds(obs, i, place, node)
            out.task[i], out.node[i] = place, node
            out.alloc[i] = self.rng.integers(low, high + 1)
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
