"""The actions of one round for all agents, in the engine's conventions, and the one place that
plays them on the engine.

Every driver of an episode (the PettingZoo `step()`, `envs.episode.run_episode`) turns what it is
given into a `RoundActions` and calls `RoundActions.play`, so the engine's round step has a single
caller outside the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tapfinger.sim.engine import Engine, InvalidActionError


@dataclass
class RoundActions:
    """task[i] = window place or -1 (do nothing); node[i] = local node; alloc[i] = amount per
    resource; realloc[i, k] = new allocation of running place k, -1 = keep (None when nobody
    preempts)."""

    task: np.ndarray  # [N] int
    node: np.ndarray  # [N] int
    alloc: np.ndarray  # [N, R] int
    realloc: np.ndarray | None = None  # [N, M, R] int

    @classmethod
    def nothing(cls, num_agents: int, num_resources: int) -> "RoundActions":
        return cls(np.full(num_agents, -1, dtype=np.int64), np.zeros(num_agents, dtype=np.int64),
                   np.zeros((num_agents, num_resources), dtype=np.int64))

    def play(self, engine: Engine) -> bool:
        """Play this round on the engine; True if it ended the slot."""
        return engine.play_round(self.task, self.node, self.alloc, self.realloc)


def from_env_actions(actions: dict[str, Any], agents: list[str], engine: Engine,
                     resources: tuple[str, ...]) -> RoundActions:
    """The PettingZoo action format (a `Dict` per agent, or a plain array `[task, node, *alloc]`;
    see `envs.edge_cluster`) as engine conventions. Agents without an action do nothing."""
    N, R, M = engine.N, engine.R, engine.M
    out = RoundActions.nothing(N, R)
    for i, agent in enumerate(agents):
        act = actions.get(agent)
        if act is None:
            continue
        if isinstance(act, dict):
            t, n, a, re = act.get("task", 0), act.get("node", 0), act.get("alloc"), act.get("realloc")
        else:
            arr = np.asarray(act, dtype=np.int64).ravel()
            if arr.size != 2 + R:
                raise InvalidActionError(
                    f"agent {agent}: array action must have {2 + R} entries [task, node, "
                    f"{', '.join(resources)}], got {arr.size}")
            t, n, a, re = arr[0], arr[1], arr[2:], None
        out.task[i] = int(t) - 1
        out.node[i] = int(n)
        if a is not None:
            out.alloc[i] = np.asarray(a, dtype=np.int64).reshape(R)
        if re is not None:
            re = np.asarray(re, dtype=np.int64).reshape(M, R)
            if re.any():
                if out.realloc is None:
                    out.realloc = np.full((N, M, R), -1, dtype=np.int64)
                out.realloc[i] = re - 1
    return out


def random_start(obs: dict[str, np.ndarray], i: int, rng: np.random.Generator,
                 p_pass: float | None = None) -> tuple[int, int, np.ndarray] | None:
    """A random action of agent i that the masks allow: (window place, node, allocation), or None
    to pass. With `p_pass` None, uniform over the task mask's choices ("do nothing" included);
    otherwise it passes with probability `p_pass` and starts a uniformly random startable task.
    The node is uniform among those that fit, each resource uniform in its mask interval."""
    if p_pass is None:
        pick = int(rng.choice(np.flatnonzero(obs["task_mask"][i])))
        if pick == 0:
            return None
        place = pick - 1
    else:
        places = np.flatnonzero(obs["task_mask"][i, 1:])
        if not places.size or rng.random() < p_pass:
            return None
        place = int(places[rng.integers(places.size)])
    nodes = np.flatnonzero(obs["node_mask"][i, place])
    n = int(nodes[rng.integers(nodes.size)])
    return place, n, rng.integers(obs["alloc_low"][i, place], obs["alloc_high"][i, n] + 1)


def random_feasible(obs: dict[str, np.ndarray], rng: np.random.Generator,
                    p_pass: float | None = None) -> RoundActions:
    """`random_start` for every agent of the batched observations (for tests and benchmarks)."""
    N = obs["window_id"].shape[0]
    out = RoundActions.nothing(N, obs["alloc_low"].shape[2])
    for i in range(N):
        start = random_start(obs, i, rng, p_pass)
        if start is not None:
            out.task[i], out.node[i], out.alloc[i] = start
    return out
