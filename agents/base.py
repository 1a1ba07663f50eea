"""The one interface every scheduler implements, heuristic and learned alike.

A policy sees, each round, the batched observations of all agents (`envs.observations`, one
row per agent: each row is only what that cluster's scheduler can know) and the scenario's
static description (cluster sizes, task types and their progress models: what a real
operator has profiled). It returns one `RoundActions` (`envs.actions`, the engine's
conventions). Nothing scheduler-specific lives in the environment.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from envs.actions import RoundActions
from tapfinger.sim.scenario import Scenario


class Policy(ABC):
    """A scheduler. `reset(seed)` at the start of every episode, then `act()` every round."""

    name: str = "policy"
    preemptive: bool = False
    learned: bool = False  # a trained policy (the harness compares it with the best heuristic)

    def __init__(self, scenario: Scenario, seed: int = 0):
        self.scenario = scenario
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int) -> None:
        # The policy's own randomness is seeded per episode, apart from the arrival stream.
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))

    @abstractmethod
    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        """Actions of all agents for this round, from the batched observations."""
