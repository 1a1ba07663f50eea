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

    def scalars(self) -> dict[str, float]:
        out = {"avg_jct": self.avg_jct, "p50_jct": self.p50_jct, "p95_jct": self.p95_jct,
               "p99_jct": self.p99_jct, "makespan": float(self.makespan),
               "decisions_per_s": self.decisions_per_s}
        out.update({f"util_{r}": u for r, u in self.utilisation.items()})
        return out


def episode_metrics(result: EpisodeResult, resources: tuple[str, ...], capacity: np.ndarray) -> EpisodeMetrics:
    jct = result.records["jct"]
    done = jct[jct >= 0].astype(np.float64)
    pct = np.percentile(done, [50, 95, 99]) if done.size else np.full(3, np.nan)
    finished = result.records["finish"]
    makespan = int(finished.max() + 1) if (finished >= 0).any() else 0
    busy = result.busy[:makespan] if makespan else result.busy
    util = busy.mean(axis=0) / np.maximum(capacity, 1) if busy.size else np.zeros(len(resources))
    return EpisodeMetrics(
        seed=result.seed, avg_jct=float(done.mean()) if done.size else float("nan"),
        p50_jct=float(pct[0]), p95_jct=float(pct[1]), p99_jct=float(pct[2]), makespan=makespan,
        utilisation={r: float(u) for r, u in zip(resources, util)},
        decisions_per_s=result.decisions / result.decide_seconds if result.decide_seconds > 0 else float("inf"),
        invalid_actions=result.invalid_actions, truncated=result.truncated,
        unfinished=int((jct < 0).sum()), jct=jct, in_system=result.in_system)


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
