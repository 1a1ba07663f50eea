"""Run one episode of a policy in a scenario and collect what metrics need.

It drives the engine the same way `EdgeClusterEnv.step()` does (build observations, one
`play_round` per round), without splitting observations into per-agent dicts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from agents.base import Policy
from envs.observations import build_observations
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import Scenario


@dataclass
class EpisodeResult:
    seed: int
    records: dict[str, np.ndarray]
    slots: int
    rounds: int
    decisions: int  # agent decisions taken (rounds × agents)
    decide_seconds: float  # wall time inside policy.act
    truncated: bool
    invalid_actions: int
    in_system: np.ndarray  # tasks in the system at each slot end
    busy: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [slots, R] resources in use

    @property
    def avg_jct(self) -> float:
        jct = self.records["jct"]
        done = jct >= 0
        return float(jct[done].mean()) if done.any() else float("nan")


def run_episode(scenario: Scenario, policy: Policy, seed: int, engine: Engine | None = None,
                max_rounds_per_slot: int = 10_000) -> EpisodeResult:
    eng = engine if engine is not None else Engine(scenario)
    eng.reset(seed)
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
        ended = eng.play_round(act.task, act.node, act.alloc, act.realloc)
        rounds_in_slot += 1
        if ended:
            busy.append(used)
            in_system.append(int(((eng.status == 1) | (eng.status == 2)).sum()))
            rounds_in_slot = 0
        elif rounds_in_slot > max_rounds_per_slot:
            raise RuntimeError(f"policy {policy.name} started tasks in {max_rounds_per_slot} rounds of one slot")
    return EpisodeResult(seed=seed, records=eng.task_records(), slots=eng.slot, rounds=eng.rounds_total,
                         decisions=eng.rounds_total * eng.N, decide_seconds=decide, truncated=eng.truncated,
                         invalid_actions=int(eng.invalid_actions.sum()), in_system=np.asarray(in_system),
                         busy=np.asarray(busy).reshape(-1, eng.R))
