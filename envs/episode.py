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


FAULT_TAKES_NODE = ("fail", "leave")  # the fault events EpisodeResult.fault_slots records


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
    # Per fault event that took a node away (a failure or a departure; Engine.fault_log), the slot at
    # whose end it came, in order (one entry per event: two nodes failing together give two). Empty
    # for a scenario without faults. The same for every policy of a seed (common random numbers),
    # up to the end of the shorter episode.
    fault_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def finished(self) -> np.ndarray:
        return self.records["jct"] >= 0

    @property
    def declined_mask(self) -> np.ndarray:
        """Per task, whether an agent declined it (admission control). Records of engines (or
        replays) from before declining existed have no "declined" key: nothing was declined."""
        flags = self.records.get("declined")
        if flags is None:
            return np.zeros(len(self.records["jct"]), dtype=bool)
        return np.asarray(flags, dtype=bool)

    @property
    def declined(self) -> int:
        """Tasks declined: they left the system unfinished, on purpose, and count as missed."""
        return int(self.declined_mask.sum())

    @property
    def unfinished(self) -> int:
        """Tasks neither finished nor declined when the episode ended (only a truncated episode has
        any): every task is counted once, as finished, declined or unfinished."""
        return int((~self.finished & ~self.declined_mask).sum())

    @property
    def deadline_ratio(self) -> float:
        """Tasks that met their deadline over the tasks that have one (declined, late and unfinished
        ones missed it); nan when no task has a deadline. `met` is the engine's (task_records)."""
        if "deadline" not in self.records or "met" not in self.records:  # records of an older engine
            return float("nan")
        has = self.records["deadline"] >= 0
        if not has.any():
            return float("nan")
        return float(self.records["met"][has].mean())

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
    missed: int = 0  # tasks that missed their deadline at this slot end (declined during it included)


RoundCallback = Callable[[RoundInfo], None]


def tasks_in_system(engine: Engine) -> int:
    return int(((engine.status == WAITING) | (engine.status == RUNNING)).sum())


def present_view(engine: Engine) -> Engine:
    """What a central scheduler knows of the system now, as an engine a planner may play forward:
    the tasks that have arrived (places, progress, free resources), each with the work it is known
    by (its estimate: a hidden truth never leaves the engine), and no future arrival at all."""
    return engine.fork(work=getattr(engine, "work_estimate", None))


def decide(policy: Actor, run: "EpisodeRun") -> RoundActions:
    """The policy's actions for this round. A planner that simulates ahead (it has
    `observe_present`, e.g. `rollout`) first gets `present_view` of the episode's engine."""
    if hasattr(policy, "observe_present"):
        policy.observe_present(present_view(run.engine))
    return policy.act(run.observe())


class EpisodeRun:
    """One episode advanced a round at a time: `observe()`, then `play(actions)`, until `done`;
    `result()` gives its `EpisodeResult`. `run_episode` is this loop for one policy; drivers that
    step many episodes in lockstep (batched training collection) use it directly, so every episode
    is measured the same way."""

    def __init__(self, scenario: Scenario, seed: int, engine: Engine | None = None,
                 workload: Workload | None = None, max_rounds_per_slot: int = 10_000, name: str = "policy"):
        self.engine = engine if engine is not None else Engine(scenario)
        self.engine.reset(seed, workload=workload)
        self.seed = seed
        self.name = name
        self.max_rounds_per_slot = max_rounds_per_slot
        self.decide_seconds = 0.0  # wall time of the policy's decisions (the driver adds to it)
        self._capacity = self.engine.static.node_capacity.sum(axis=0)
        self._in_system: list[int] = []
        self._busy: list[np.ndarray] = []
        self._rounds_in_slot = 0
        self._obs: dict[str, np.ndarray] | None = None

    @property
    def done(self) -> bool:
        return self.engine.done

    def observe(self) -> dict[str, np.ndarray]:
        """The batched observations of this round (built once per round)."""
        if self._obs is None:
            self._obs = build_observations(self.engine)
        return self._obs

    def progress_features(self) -> np.ndarray:
        """[tasks yet to arrive, tasks in the system] over the episode's task count: where the
        episode stands. A scheduler knows both (the arrival model fixes the count; it sees arrivals);
        the training critic gets them, because a return to go depends mostly on what is still to come."""
        eng = self.engine
        return np.array([(eng.T - eng.next_arrival) / eng.T, tasks_in_system(eng) / eng.T], dtype=np.float32)

    def play(self, act: RoundActions) -> RoundInfo:
        """Play this round's actions; what happened, for recorders."""
        eng = self.engine
        obs = self.observe()
        used = self._capacity - eng.node_free.sum(axis=0)
        during = tasks_in_system(eng)
        ended = act.play(eng)
        self._obs = None
        self._rounds_in_slot += 1
        if ended:
            self._busy.append(used)
            self._in_system.append(tasks_in_system(eng))
            self._rounds_in_slot = 0
        elif self._rounds_in_slot > self.max_rounds_per_slot:
            raise RuntimeError(f"policy {self.name} started tasks in {self.max_rounds_per_slot} rounds of one slot")
        return RoundInfo(obs, act, ended, during, eng.last_missed_tasks if ended else 0)

    def result(self) -> EpisodeResult:
        eng = self.engine
        return EpisodeResult(seed=self.seed, records=eng.task_records(), slots=eng.slot, rounds=eng.rounds_total,
                             decisions=eng.rounds_total * eng.N, decide_seconds=self.decide_seconds,
                             truncated=eng.truncated, invalid_actions=int(eng.invalid_actions.sum()),
                             in_system=np.asarray(self._in_system),
                             busy=np.asarray(self._busy).reshape(-1, eng.R),
                             fault_slots=np.array([slot for slot, _, event in getattr(eng, "fault_log", ())
                                                   if event in FAULT_TAKES_NODE], dtype=np.int64))


def run_episode(scenario: Scenario, policy: Actor, seed: int, engine: Engine | None = None,
                workload: Workload | None = None, on_round: RoundCallback | None = None,
                max_rounds_per_slot: int = 10_000) -> EpisodeResult:
    """Play one episode of `policy` from `seed` (arrivals from the seed, or `workload` if given)."""
    run = EpisodeRun(scenario, seed, engine, workload, max_rounds_per_slot,
                     name=getattr(policy, "name", type(policy).__name__))
    if hasattr(policy, "reset"):
        policy.reset(seed)
    while not run.done:
        t0 = time.perf_counter()
        act = decide(policy, run)
        run.decide_seconds += time.perf_counter() - t0
        info = run.play(act)
        if on_round is not None:
            on_round(info)
    return run.result()


__all__ = ["Actor", "EpisodeResult", "EpisodeRun", "RoundCallback", "RoundInfo", "decide", "present_view", "run_episode",
           "tasks_in_system"]
