"""The one episode loop: every driver of whole episodes (evaluation, training collection, export
checks, replay of optimal schedules, benchmarks) runs episodes through `run_episode`, so episode
metrics are computed in one place (`EpisodeResult`).

A policy here is anything with `act(batched_observations) -> RoundActions` and, optionally,
`reset(seed)` and a `name` (`agents.base.Policy` is one; so is a small adapter). `on_round` is
called after each round with the observations the policy saw, its actions and whether the slot
ended (a `RoundInfo`), for callers that record what happened (training, export checks).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from envs.actions import RoundActions
from envs.observations import build_observations
from tapfinger.sim.engine import RUNNING, WAITING, Engine
from tapfinger.sim.scenario import Scenario
from tapfinger.sim.workload import Workload


class Actor(Protocol):
    def act(self, obs: dict[str, np.ndarray]) -> RoundActions: ...


@dataclass
class EpisodeResult:
    seed: int
    records: dict[str, np.ndarray]  # per task (Engine.task_records); jct = -1 for an unfinished task
    slots: int
    rounds: int
    decisions: int  # agent decisions taken (rounds × agents)
    decide_seconds: float  # wall time inside policy.act
    truncated: bool
    invalid_actions: int
    in_system: np.ndarray  # tasks in the system at each slot end
    busy: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [slots, R] resources in use

    @property
    def finished(self) -> np.ndarray:
        return self.records["jct"] >= 0

    @property
    def unfinished(self) -> int:
        """Tasks not finished when the episode ended (only a truncated episode has any)."""
        return int((~self.finished).sum())

    @property
    def avg_jct(self) -> float:
        """Mean JCT of the finished tasks (unfinished ones are reported by `unfinished`, never
        averaged in); nan when none finished."""
        done = self.finished
        return float(self.records["jct"][done].mean()) if done.any() else float("nan")


@dataclass(frozen=True)
class RoundInfo:
    """What `on_round` receives after each round."""

    obs: dict[str, np.ndarray]  # the batched observations the policy acted on
    actions: RoundActions
    slot_ended: bool
    tasks_during: int  # tasks in the system during the round: what a slot end charges (team reward)


RoundCallback = Callable[[RoundInfo], None]


def tasks_in_system(engine: Engine) -> int:
    return int(((engine.status == WAITING) | (engine.status == RUNNING)).sum())


def run_episode(scenario: Scenario, policy: Actor, seed: int, engine: Engine | None = None,
                workload: Workload | None = None, on_round: RoundCallback | None = None,
                max_rounds_per_slot: int = 10_000) -> EpisodeResult:
    """Play one episode of `policy` from `seed` (arrivals from the seed, or `workload` if given)."""
    eng = engine if engine is not None else Engine(scenario)
    eng.reset(seed, workload=workload)
    if hasattr(policy, "reset"):
        policy.reset(seed)
    in_system, busy = [], []
    capacity = eng.static.node_capacity.sum(axis=0)
    rounds_in_slot = 0
    decide = 0.0
    while not eng.done:
        obs = build_observations(eng)
        t0 = time.perf_counter()
        act = policy.act(obs)
        decide += time.perf_counter() - t0
        used = capacity - eng.node_free.sum(axis=0)
        during = tasks_in_system(eng) if on_round is not None else 0
        ended = act.play(eng)
        if on_round is not None:
            on_round(RoundInfo(obs, act, ended, during))
        rounds_in_slot += 1
        if ended:
            busy.append(used)
            in_system.append(tasks_in_system(eng))
            rounds_in_slot = 0
        elif rounds_in_slot > max_rounds_per_slot:
            name = getattr(policy, "name", type(policy).__name__)
            raise RuntimeError(f"policy {name} started tasks in {max_rounds_per_slot} rounds of one slot")
    return EpisodeResult(seed=seed, records=eng.task_records(), slots=eng.slot, rounds=eng.rounds_total,
                         decisions=eng.rounds_total * eng.N, decide_seconds=decide, truncated=eng.truncated,
                         invalid_actions=int(eng.invalid_actions.sum()), in_system=np.asarray(in_system),
                         busy=np.asarray(busy).reshape(-1, eng.R))


__all__ = ["Actor", "EpisodeResult", "RoundCallback", "RoundInfo", "run_episode", "tasks_in_system"]
