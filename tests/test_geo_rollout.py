"""okita-rollout (agents/geo/rollout.py) and its futures and engine copies (agents/geo/geo_futures.py):
a copy shares no mutable state and replays identically; imagined futures follow the scenario's
arrival model; with one candidate it is okita exactly; it never reads unarrived jobs; the same seed
gives the same episode; its decisions are valid; with the exact future it never costs more than
okita (the rollout property, which checks the candidates' bookkeeping)."""

from __future__ import annotations

import numpy as np
import pytest

import agents.geo.rollout as rollout_module
from agents.geo.base import GeoPolicy
from agents.geo.geo_futures import (arrived_count, copy_engine, future_rng, imagined_engine,
                                    sample_future_jobs)
from agents.geo.okita import OkitaPolicy
from agents.geo.rollout import OkitaRolloutPolicy, pick
from envs.geo_episode import run_geo_episode
from tapfinger.sim.geo.engine import GeoEngine
from tapfinger.sim.geo.model import GeoScenario
from tapfinger.sim.geo.scenario import draw_jobs, load_geo_scenario

GEO6 = load_geo_scenario("geo-6")
FAST = {"futures": 1, "horizon": 4}  # enough to exercise every path in a test's time


class Logged(GeoPolicy):
    """Wraps a policy: checks each decision against the engine's rules and records it."""

    def __init__(self, inner: GeoPolicy):
        self.inner, self.log = inner, []

    def reset(self, scenario, seed):
        self.inner.reset(scenario, seed)
        self.log = []

    def decide(self, engine):
        d = self.inner.decide(engine)
        assert engine.decision_problem(d) is None, engine.decision_problem(d)
        self.log.append(({i: (ps, tuple(int(x) for x in w)) for i, (ps, w) in d.placements.items()}, tuple(d.moves)))
        return d


def _engine_at(seed: int, slots: int) -> tuple[GeoEngine, OkitaPolicy]:
    eng, pol = GeoEngine(GEO6), OkitaPolicy()
    eng.reset(seed)
    pol.reset(GEO6, seed)
    for _ in range(slots):
        eng.step(pol.decide(eng))
    return eng, pol


def _replay(a: GeoEngine, b: GeoEngine, pol: OkitaPolicy) -> tuple[list[float], list[float]]:
    """Play okita's decisions (made on `a`) on both engines to the end; each engine's slot costs."""
    ca, cb = [], []
    while not a.done:
        d = pol.decide(a)
        ca.append(a.step(d))
        cb.append(b.step(d))
    return ca, cb


def test_copy_shares_no_mutable_state_and_replays_identically():
    eng, pol = _engine_at(3, 5)
    dup = copy_engine(eng)
    for name, value in vars(eng).items():
        other = vars(dup)[name]
        if isinstance(value, np.ndarray):
            assert not np.shares_memory(value, other), name
            assert np.array_equal(value, other), name
        else:  # what stays shared must be immutable
            assert isinstance(value, (int, float, bool, tuple, GeoScenario, np.integer)), name
    before = eng.passes_left.copy(), eng.latency_cost.copy()
    scratch = copy_engine(eng)
    scratch.step(pol.decide(scratch))  # stepping a copy leaves the original alone
    assert np.array_equal(eng.passes_left, before[0]) and np.array_equal(eng.latency_cost, before[1])
    ca, cb = _replay(eng, dup, pol)
    assert ca == cb and len(ca) > 0
    assert eng.total_cost() == dup.total_cost() and eng.records() == dup.records()


def test_imagined_engine_with_the_true_future_replays_the_episode():
    eng, pol = _engine_at(5, 6)
    n = arrived_count(eng)
    assert 0 < n < eng.J
    sim = imagined_engine(eng, tuple(eng.jobs[n:]))
    assert sim.jobs == eng.jobs and sim.slot == eng.slot
    ca, cb = _replay(eng, sim, pol)
    assert ca == cb
    with pytest.raises(ValueError, match="arrive after slot"):
        imagined_engine(eng, (eng.jobs[0],))


def test_imagined_engine_holds_no_unarrived_job_of_the_episode():
    eng, _ = _engine_at(5, 6)
    n = arrived_count(eng)
    sim = imagined_engine(eng, ())
    assert sim.J == n and sim.jobs == eng.jobs[:n]
    assert np.array_equal(sim.passes_left, eng.passes_left[:n])


def test_future_jobs_follow_the_arrival_model():
    jr, slot, arrived = GEO6.jobs, 7, 5
    jobs = sample_future_jobs(GEO6, slot, arrived, future_rng(1, slot, 0))
    assert len(jobs) == jr.count - arrived
    arrivals = [j.arrival for j in jobs]
    assert arrivals == sorted(arrivals) and all(slot < a < jr.arrival_slots for a in arrivals)
    for j in jobs:
        data = [b for b in j.blocks if b > 0]
        assert jr.data_sites[0] <= len(data) <= jr.data_sites[1]
        assert all(jr.blocks_per_site[0] <= b <= jr.blocks_per_site[1] for b in data)
        assert jr.epochs[0] <= j.epochs <= jr.epochs[1] and jr.block_mb[0] <= j.block_mb <= jr.block_mb[1]
        assert all(lo <= w <= hi for lo, w, hi in zip(jr.worker_low, j.worker, jr.worker_high))
        assert all(lo <= w <= hi for lo, w, hi in zip(jr.ps_low, j.ps, jr.ps_high))
        for p, (lo, hi) in jr.latency_ranges:
            assert lo <= getattr(j.latency, p) <= hi
    assert jobs == sample_future_jobs(GEO6, slot, arrived, future_rng(1, slot, 0))
    assert jobs != sample_future_jobs(GEO6, slot, arrived, future_rng(1, slot, 1))
    assert jobs != sample_future_jobs(GEO6, slot, arrived, future_rng(2, slot, 0))
    near = sample_future_jobs(GEO6, slot, arrived, future_rng(1, slot, 0), until=slot + 3)
    assert all(j.arrival <= slot + 3 for j in near)
    assert sample_future_jobs(GEO6, slot, jr.count, future_rng(1, slot, 0)) == ()
    assert sample_future_jobs(GEO6, jr.arrival_slots - 1, 3, future_rng(1, slot, 0)) == ()


def test_one_candidate_is_okita_exactly():
    for seed in (0, 1):
        a, b = Logged(OkitaPolicy()), Logged(OkitaRolloutPolicy(candidates=1))
        ra, rb = run_geo_episode(GEO6, a, seed), run_geo_episode(GEO6, b, seed)
        assert a.log == b.log and ra.total_cost == rb.total_cost


def test_no_clairvoyance_later_jobs_do_not_change_earlier_decisions():
    seed, s = 4, 8
    first = draw_jobs(GEO6, seed)
    early = tuple(j for j in first if j.arrival <= s)
    late = tuple(j for j in draw_jobs(GEO6, seed + 100) if j.arrival > s)
    other = early + late
    assert other != first and 0 < len(early) < len(first)
    a, b = Logged(OkitaRolloutPolicy(**FAST)), Logged(OkitaRolloutPolicy(**FAST))
    run_geo_episode(GEO6, a, seed, jobs=first)
    run_geo_episode(GEO6, b, seed, jobs=other)
    assert a.log[:s + 1] == b.log[:s + 1]


def test_same_seed_same_episode_and_it_does_deviate_from_okita():
    runs = []
    for _ in range(2):
        p = Logged(OkitaRolloutPolicy(**FAST))
        r = run_geo_episode(GEO6, p, 1000)
        runs.append((p.log, r.total_cost, p.inner.deviations))
    assert runs[0] == runs[1]
    assert run_geo_episode(GEO6, OkitaRolloutPolicy(**FAST), 1002).unfinished == 0
    assert runs[0][2] > 0, "the variants never won: the rollout would be okita by another name"


def test_with_the_exact_future_rollout_never_costs_more_than_okita(monkeypatch):
    """The rollout property: scored on the episode's own future to its end (a diagnostic made by
    replacing the sampler, never the policy's behaviour), each slot's choice is no worse than
    continuing with okita, so the episode is no worse. It fails if a candidate's score is not what
    playing it and then okita would cost (e.g. an imagined engine that loses a job's state)."""
    for seed in (1000, 1007):
        jobs = draw_jobs(GEO6, seed)
        monkeypatch.setattr(rollout_module, "sample_future_jobs",
                            lambda sc, slot, n, rng, until=None, jobs=jobs: tuple(j for j in jobs if j.arrival > slot))
        policy = OkitaRolloutPolicy(futures=1, horizon=GEO6.max_slots)
        rolled = run_geo_episode(GEO6, policy, seed)
        base = run_geo_episode(GEO6, OkitaPolicy(), seed)
        assert rolled.total_cost <= base.total_cost + 1e-6
        assert policy.deviations > 0


def test_pick_takes_the_lowest_mean_and_ties_go_to_okita():
    assert pick(np.array([[5.0, 5.0], [4.0, 7.0], [4.0, 5.0]])) == 2
    assert pick(np.array([[5.0, 5.0], [5.0, 5.0]])) == 0
    assert pick(np.array([[5.0, 5.0], [3.0, 6.0]])) == 1
    assert pick(np.array([[5.0, 5.0], [3.0, 6.0]]), unanimous=True) == 0


def test_bad_options_are_clear_errors():
    for bad in ({"candidates": 0}, {"futures": 0}, {"horizon": -1}, {"jobs": -1}):
        with pytest.raises(ValueError, match="okita-rollout"):
            OkitaRolloutPolicy(**bad)
