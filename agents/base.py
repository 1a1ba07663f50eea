"""The one interface every scheduler implements, heuristic and learned alike.

A policy sees, each round, the batched observations of all agents (`envs.observations`, one
row per agent: each row is only what that cluster's scheduler can know) and the scenario's
static description (cluster sizes, task types and their progress models: what a real
operator has profiled). It returns one `RoundActions`. Nothing scheduler-specific lives in
the environment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from tapfinger.sim.scenario import Scenario


@dataclass
class RoundActions:
    """Engine conventions: task[i] = window place or -1 (do nothing); node[i] = local node;
    alloc[i] = amount per resource; realloc[i, k] = new allocation of running place k, -1 = keep
    (None when the policy never preempts)."""

    task: np.ndarray  # [N] int
    node: np.ndarray  # [N] int
    alloc: np.ndarray  # [N, R] int
    realloc: np.ndarray | None = None  # [N, M, R] int

    @classmethod
    def nothing(cls, num_agents: int, num_resources: int) -> "RoundActions":
        return cls(np.full(num_agents, -1, dtype=np.int64), np.zeros(num_agents, dtype=np.int64),
                   np.zeros((num_agents, num_resources), dtype=np.int64))

    def to_env_actions(self, agents: list[str], max_running: int) -> dict[str, dict]:
        """The same actions in the PettingZoo `Dict` action format."""
        out = {}
        for i, a in enumerate(agents):
            act = {"task": int(self.task[i]) + 1, "node": int(self.node[i]), "alloc": self.alloc[i].copy()}
            if self.realloc is not None:
                act["realloc"] = self.realloc[i] + 1
            out[a] = act
        return out


class Policy(ABC):
    """A scheduler. `reset(seed)` at the start of every episode, then `act()` every round."""

    name: str = "policy"
    preemptive: bool = False

    def __init__(self, scenario: Scenario, seed: int = 0):
        self.scenario = scenario
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int) -> None:
        # The policy's own randomness is seeded per episode, apart from the arrival stream.
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))

    @abstractmethod
    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        """Actions of all agents for this round, from the batched observations."""
