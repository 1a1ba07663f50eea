"""Metrics of one episode, and statistics across seeds (means, 95% CIs, paired differences)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from envs.episode import EpisodeResult


@dataclass
class EpisodeMetrics:
    seed: int
    avg_jct: float
    p50_jct: float
    p95_jct: float
    p99_jct: float
    makespan: int
    utilisation: dict[str, float]
    decisions_per_s: float
    invalid_actions: int
    truncated: bool
    unfinished: int
    jct: np.ndarray  # per task, for CDFs
    in_system: np.ndarray  # per slot end
    # Deadlines (defaults: an episode without deadline tasks, as every episode was before them).
    deadline_tasks: int = 0  # tasks with a deadline (best-effort tasks have none)
    deadline_ratio: float = float("nan")  # met / deadline_tasks; nan when no task has a deadline
    declined: int = 0  # tasks an agent declined (admission control), with or without a deadline
    lateness: float = float("nan")  # mean slots late of the tasks that finished late; nan when none
    # Faults (defaults: an episode without faults, as every episode was before them; `fault_outcomes`).
    lost_work: float = 0.0  # progress lost to failures, in whole tasks' work
    restarts: int = 0  # restarts of tasks after failures, departures and capacity shrinks
    failures: int = 0  # times a failure hit a running task
    recovery: float = float("nan")  # mean slots from a failure to the restart of a task it hit
    fault_slots: tuple[int, ...] = ()  # EpisodeResult.fault_slots: slots at whose end a node failed or left

    def __post_init__(self) -> None:
        # a tuple of ints whatever it was given as (an array, a list read back from the cache)
        self.fault_slots = tuple(int(x) for x in self.fault_slots)

    @property
    def has_deadlines(self) -> bool:
        """Whether this episode has anything the deadline metrics measure."""
        return self.deadline_tasks > 0 or self.declined > 0

    @property
    def has_faults(self) -> bool:
        """Whether this episode met a fault that the fault metrics measure (a node that failed or
        left, or a task a failure hit). Restarts alone do not count: a capacity schedule preempts
        tasks in scenarios without faults."""
        return bool(self.fault_slots) or self.failures > 0

    def scalars(self) -> dict[str, float]:
        out = {"avg_jct": self.avg_jct, "p50_jct": self.p50_jct, "p95_jct": self.p95_jct,
               "p99_jct": self.p99_jct, "makespan": float(self.makespan),
               "decisions_per_s": self.decisions_per_s}
        out.update({f"util_{r}": u for r, u in self.utilisation.items()})
        return out


def deadline_outcomes(records: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per task: (has a deadline, met it, slots late). A task meets its deadline iff it finished
    and finish < deadline (the deadline falls during slot `deadline`, so finishing at the end of
    the slot before it is in time); declined, late and unfinished tasks with a deadline missed it.
    Slots late = finish + 1 - deadline for a task that finished late (>= 1), else -1.

    The engine's "met" and "lateness" records are used when present; records without them (older
    engines, replays, hand-made ones) are computed from "finish" and "deadline", and records
    without "deadline" have no deadline task."""
    n = len(records["jct"])
    if "deadline" not in records:
        return np.zeros(n, dtype=bool), np.zeros(n, dtype=bool), np.full(n, -1, dtype=np.int64)
    deadline = np.asarray(records["deadline"], dtype=np.int64)
    finish = np.asarray(records["finish"], dtype=np.int64)
    has = deadline >= 0
    if "met" in records:
        met = np.asarray(records["met"], dtype=bool) & has
    else:
        met = has & (finish >= 0) & (finish < deadline)
    if "lateness" in records:
        late = np.where(has, np.asarray(records["lateness"], dtype=np.int64), -1)
    else:
        late = np.where(has & (finish >= 0) & (finish >= deadline), finish + 1 - deadline, -1)
    if "declined" in records:  # a declined task never finished: it can neither meet nor be late
        gone = np.asarray(records["declined"], dtype=bool)
        met, late = met & ~gone, np.where(gone, -1, late)
    return has, met, late


def fault_outcomes(records: dict[str, np.ndarray]) -> tuple[float, int, int, float]:
    """(lost work, restarts, failures, recovery) of one episode's task records:

    - lost work: the progress failures destroyed (what tasks had made since their last checkpoint),
      summed over tasks, in units of one task's whole work (2.5 = two and a half tasks' worth);
    - restarts: times a task started again after it had been stopped (a failure, a departure, a
      capacity shrink: the engine's "preemptions");
    - failures: times a failure hit a running task;
    - recovery: mean slots from a failure to the restart of the task it hit, over the hits of the
      tasks that finished (a failed task waits, so every hit of a finished task was followed by its
      restart; a task left unfinished when a truncated episode ended may still be waiting, so its
      hits are left out). The slot count is restart slot - failure slot (the failure comes at a
      slot's end, so a restart in the next slot takes 1). nan when no finished task was hit.

    Records without these keys (engines and caches from before faults) had no faults: 0 and nan."""
    n = len(records["jct"])
    zeros = np.zeros(n)
    failures = np.asarray(records.get("failures", zeros), dtype=np.int64)
    recovery_slots = np.asarray(records.get("recovery_slots", zeros), dtype=np.float64)
    done = np.asarray(records["jct"]) >= 0
    hits = int(failures[done].sum())
    recovery = float(recovery_slots[done].sum() / hits) if hits else float("nan")
    return (float(np.asarray(records.get("lost_work", zeros), dtype=np.float64).sum()),
            int(np.asarray(records.get("preemptions", zeros)).sum()), int(failures.sum()), recovery)


def episode_metrics(result: EpisodeResult, resources: tuple[str, ...], capacity: np.ndarray) -> EpisodeMetrics:
    jct = result.records["jct"]
    done = jct[jct >= 0].astype(np.float64)
    pct = np.percentile(done, [50, 95, 99]) if done.size else np.full(3, np.nan)
    finished = result.records["finish"]
    makespan = int(finished.max() + 1) if (finished >= 0).any() else 0
    busy = result.busy[:makespan] if makespan else result.busy
    util = busy.mean(axis=0) / np.maximum(capacity, 1) if busy.size else np.zeros(len(resources))
    has, met, late = deadline_outcomes(result.records)
    late = late[late >= 1]
    lost, restarts, failures, recovery = fault_outcomes(result.records)
    return EpisodeMetrics(
        seed=result.seed, avg_jct=float(done.mean()) if done.size else float("nan"),
        p50_jct=float(pct[0]), p95_jct=float(pct[1]), p99_jct=float(pct[2]), makespan=makespan,
        utilisation={r: float(u) for r, u in zip(resources, util)},
        decisions_per_s=result.decisions / result.decide_seconds if result.decide_seconds > 0 else float("inf"),
        invalid_actions=result.invalid_actions, truncated=result.truncated,
        unfinished=result.unfinished, jct=jct, in_system=result.in_system,
        deadline_tasks=int(has.sum()), deadline_ratio=float(met.sum() / has.sum()) if has.any() else float("nan"),
        declined=result.declined, lateness=float(late.mean()) if late.size else float("nan"),
        lost_work=lost, restarts=restarts, failures=failures, recovery=recovery,
        fault_slots=getattr(result, "fault_slots", ()))


def mean_ci(values: np.ndarray | list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval (low, high) of the mean."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(x.mean())
    if x.size < 2 or np.all(x == x[0]):
        return m, m, m
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / np.sqrt(x.size))
    return m, m - half, m + half


def summary(values: np.ndarray | list[float]) -> dict:
    m, lo, hi = mean_ci(values)
    return {"mean": m, "ci95": [lo, hi], "per_seed": [float(v) for v in values]}


FAULT_KEYS = ("lost_work", "restarts", "failures", "recovery")  # results.json keys of fault_entry


def fault_entry(eps: list[EpisodeMetrics]) -> dict:
    """The fault metrics of one policy's episodes (seed order), each in the `summary` form."""
    return {"lost_work": summary([e.lost_work for e in eps]),
            "restarts": summary([float(e.restarts) for e in eps]),
            "failures": summary([float(e.failures) for e in eps]),
            "recovery": summary([e.recovery for e in eps])}
