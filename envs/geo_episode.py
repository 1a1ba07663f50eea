"""`run_geo_episode`: the one loop that drives a whole geo episode, and what it reports."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tapfinger.sim.geo.engine import GeoEngine
from tapfinger.sim.geo.model import GeoJob, GeoScenario


@dataclass
class GeoEpisodeResult:
    seed: int
    slots: int
    truncated: bool
    jobs: int
    unfinished: int
    total_cost: float
    latency_cost: float
    transfer_cost: float
    exchange_cost: float
    mb_moved: float
    avg_jct: float  # over finished jobs, in slots
    decide_seconds: float  # time spent in the policy's decide()
    records: list[dict]


def run_geo_episode(scenario: GeoScenario, policy, seed: int, jobs: tuple[GeoJob, ...] | None = None,
                    engine: GeoEngine | None = None) -> GeoEpisodeResult:
    """Play `policy` (a `agents.geo.base.GeoPolicy`) on the jobs of `seed` (or `jobs`) to the end."""
    eng = engine or GeoEngine(scenario)
    eng.reset(seed, jobs)
    policy.reset(scenario, seed)
    spent = 0.0
    while not eng.done:
        t0 = time.perf_counter()
        decision = policy.decide(eng)
        spent += time.perf_counter() - t0
        eng.step(decision)
    recs = eng.records()
    jcts = [r["jct"] for r in recs if r["jct"] is not None]
    return GeoEpisodeResult(
        seed=seed, slots=eng.slot, truncated=eng.truncated, jobs=eng.J, unfinished=eng.J - len(jcts),
        total_cost=eng.total_cost(), latency_cost=float(eng.latency_cost.sum()),
        transfer_cost=float(eng.transfer_cost.sum()), exchange_cost=float(eng.exchange_cost.sum()),
        mb_moved=float(eng.mb_moved.sum()), avg_jct=sum(jcts) / len(jcts) if jcts else float("nan"),
        decide_seconds=spent, records=recs)
