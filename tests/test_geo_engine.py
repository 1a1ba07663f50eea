"""The geo engine (issue 16) against its rules: hypothesis invariants under random and adversarial
decisions, checked against an independent block-by-block reference (`Blocks`), and unit tests of single
rules (bad scenario files: tests/test_geo_scenario_files.py). Expected values come from the rules of
docs/geo-distributed.md ("A slot, in order"), computed here, never from the engine's own output."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tapfinger.sim.geo.engine import LINK_TOLERANCE_MB, NO_SITE, GeoActionError, GeoDecision, GeoEngine
from tapfinger.sim.geo.model import GeoJob, LatencyCost
from tapfinger.sim.geo.scenario import draw_jobs, load_geo_scenario, parse_geo_scenario

TINY = {  # 3 sites, tight capacities and links, up to 3 epochs: the rules' corners come up often
    "name": "tiny", "family": "geo", "resources": ["gpu", "cpu"], "max_slots": 120, "max_workers_per_site": 3,
    "window": 4,
    "sites": {"capacity": [[2, 8], [1, 4], [3, 6]], "cost": [[0, 2, 5], [2, 0, 3], [5, 3, 0]],
              "link_mb": [[0, 200, 0], [150, 0, 100], [0, 120, 0]]},
    "jobs": {"count": 6, "arrival_slots": 5, "data_sites": [1, 3], "blocks_per_site": [1, 4],
             "block_mb": [50.0, 100.0], "epochs": [1, 3], "blocks_per_slot": [1, 4], "exchange_mb": [30.0, 100.0],
             "worker_low": [0, 1], "worker_high": [1, 3], "ps_low": [0, 1], "ps_high": [0, 2],
             "latency": "linear", "latency_tau": [1.0, 5.0], "latency_b": [0.0, 2.0]},
}


def tiny(**changes):
    return dataclasses.replace(parse_geo_scenario(TINY, "<tiny>"), **changes)


SCENARIOS = {"geo-6": lambda: load_geo_scenario("geo-6"), "tiny": tiny}
LINEAR = LatencyCost(kind="linear", tau=2.0, b=1.0)  # f(t) = 2 t + 1, the unit tests' latency cost


# ----------------------------------------------------------------------------- the reference
class Blocks:
    """Every block of every job, one by one: where it is and how many passes it has had. A site
    trains the blocks it holds one after another (the partly trained one first); a move takes
    untouched blocks; the moved blocks join their destination at the end of the slot."""

    def __init__(self, eng: GeoEngine):
        self.e = eng.epochs.tolist()
        self.at = [[[0] * int(n) for n in eng.blocks0[i]] for i in range(eng.J)]  # passes had, per block
        self.done = [0] * eng.J  # blocks that had all their passes
        self.completion = [-1] * eng.J

    def passes_left(self, i: int) -> list[int]:
        return [sum(self.e[i] - p for p in site) for site in self.at[i]]

    def play(self, eng: GeoEngine, d: GeoDecision, slot: int) -> float:
        """Play the (valid) decision; the slot's transfer + exchange cost."""
        cost, landing = 0.0, []
        for i, src, dst, n in d.moves:
            untouched = [k for k, p in enumerate(self.at[i][src]) if p == 0]
            assert len(untouched) >= n, "the engine accepted a move of blocks that are not untouched"
            for k in sorted(untouched[-n:], reverse=True):
                self.at[i][src].pop(k)
            landing.append((i, dst, n))
            cost += eng.cost[src, dst] * eng.block_mb[i] * n / 100
        for i, (ps, workers) in d.placements.items():
            for r, w in enumerate(workers):
                budget = int(eng.rate[i]) * int(w)
                cost += w * eng.exchange_mb[i] * eng.cost[r, ps] / 100
                for k in range(len(self.at[i][r])):  # the partly trained block first, then in order
                    take = min(budget, self.e[i] - self.at[i][r][k])
                    self.at[i][r][k] += take
                    budget -= take
                self.done[i] += sum(p == self.e[i] for p in self.at[i][r])
                self.at[i][r] = [p for p in self.at[i][r] if p < self.e[i]]
        for i, dst, n in landing:
            self.at[i][dst] += [0] * n
        for i in np.flatnonzero((eng.arrival <= slot) & (np.array(self.completion) < 0)):
            if not any(self.at[i]):
                self.completion[i] = slot
        return cost


def snapshot(eng: GeoEngine) -> dict:
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(eng).items()}


def assert_unchanged(before: dict, eng: GeoEngine) -> None:
    after = vars(eng)
    assert before.keys() == after.keys()
    for k, v in before.items():
        assert np.array_equal(v, after[k]) if isinstance(v, np.ndarray) else v == after[k], k


# ----------------------------------------------------------------------------- decisions
def fits(free: np.ndarray, need: np.ndarray, mw: int) -> int:
    """How many units of `need` fit in `free` (at most mw)."""
    pos = need > 0
    return int(min(mw, (free[pos] // need[pos]).min())) if pos.any() else mw


def random_valid(eng: GeoEngine, rng: np.random.Generator) -> GeoDecision:
    """A random decision within every rule: capacities, workers with a PS, untouched blocks, links."""
    free, mw, R = eng.capacity.copy(), eng.scenario.max_workers_per_site, eng.R
    placements = {}
    for i in rng.permutation(eng.pending()):
        sites = np.flatnonzero((eng.ps_need[i] <= free).all(axis=1))
        if rng.random() < 0.2 or not sites.size:
            continue
        ps = int(rng.choice(sites))
        free[ps] -= eng.ps_need[i]
        workers = np.zeros(R, dtype=np.int64)
        for r in rng.permutation(R):
            if eng.passes_left[i, r] or rng.random() < 0.3:
                workers[r] = rng.integers(0, fits(free[r], eng.worker_need[i], mw) + 1)
                free[r] -= workers[r] * eng.worker_need[i]
        placements[int(i)] = (ps, workers)
    moves, link_left = [], np.where(eng.link_mb > 0, eng.link_mb, 1e18)  # 0 = unlimited
    for i in eng.pending():
        movable = eng.movable_blocks(i).copy()
        for src in np.flatnonzero((movable > 0) & (rng.random(R) < 0.5)):
            dst = int(rng.choice([r for r in range(R) if r != src]))
            n = int(min(movable[src], (link_left[src, dst] + 1e-9) // eng.block_mb[i]))
            if n >= 1:
                n = int(rng.integers(1, n + 1))
                moves.append((int(i), int(src), dst, n))
                movable[src] -= n
                link_left[src, dst] -= n * eng.block_mb[i]
    return GeoDecision(placements=placements, moves=tuple(moves))


def random_bad(eng: GeoEngine, rng: np.random.Generator) -> GeoDecision:
    """A valid decision with one thing broken at random, mostly just over a limit (a few such
    decisions happen to stay valid: they are played, and checked as valid ones)."""
    d = random_valid(eng, rng)
    placements, moves, R, J = dict(d.placements), list(d.moves), eng.R, eng.J
    others = np.concatenate([np.flatnonzero(eng.arrival > eng.slot), np.flatnonzero(eng.completion >= 0), [J, J + 5]])
    pending = eng.pending()
    job = int(rng.choice(pending if pending.size and rng.random() < 0.5 else others.astype(np.int64)))
    kind = int(rng.integers(7))
    if kind == 0:  # any job (unarrived, finished, no such job, pending) with a random placement
        placements[job] = (int(rng.integers(-1, R + 1)), rng.integers(-1, eng.scenario.max_workers_per_site + 3, R))
    elif kind == 1:  # workers without a PS
        placements[job] = (NO_SITE, rng.integers(0, 3, R))
    elif kind == 2 and placements:  # one more worker somewhere: over a capacity or max_workers_per_site
        i = int(rng.choice(list(placements)))
        workers = placements[i][1].copy()
        workers[rng.integers(R)] += 1
        placements[i] = (placements[i][0], workers)
    elif kind == 3:  # one block more than a site has untouched, a partly trained one if there is one
        partial = np.argwhere(eng.passes_left[pending] % eng.epochs[pending, None] > 0)
        i, src = (int(pending[partial[0, 0]]), int(partial[0, 1])) if len(partial) else (min(job, J - 1), 0)
        moves.append((i, src, (src + 1) % R, int(eng.movable_blocks(i)[src]) + 1))
    elif kind == 4:  # every pending job sends all its untouched blocks over one limited link
        links = np.argwhere(eng.link_mb > 0)
        src, dst = links[rng.integers(len(links))] if len(links) else (0, 1)
        moves = [(int(i), int(src), int(dst), int(eng.movable_blocks(i)[src])) for i in pending
                 if eng.movable_blocks(i)[src]]
    elif kind == 5:  # a move of nothing, to its own site, or between sites that do not exist
        src, dst = (int(v) for v in rng.integers(-1, R + 1, 2))
        moves.append((job, src, dst, int(rng.integers(-1, 3))))
    else:  # malformed workers: a wrong length, or floats
        placements[job] = (0, np.zeros(R + 1, dtype=np.int64) if rng.random() < 0.5 else np.zeros(R))
    return GeoDecision(placements=placements, moves=tuple(moves))


def site_usage(eng: GeoEngine, d: GeoDecision) -> np.ndarray:
    return sum((np.outer(w, eng.worker_need[i]) + np.outer(np.arange(eng.R) == ps, eng.ps_need[i])
                for i, (ps, w) in d.placements.items()), np.zeros_like(eng.capacity))


# ----------------------------------------------------------------------------- invariants
def check_step(eng: GeoEngine, ref: Blocks, d: GeoDecision, returns: list[float]) -> None:
    before, slot = snapshot(eng), eng.slot
    problem = eng.decision_problem(d)
    assert_unchanged(before, eng)  # asking is free
    if problem is not None:
        with pytest.raises(GeoActionError, match=f"slot {slot}: "):
            eng.step(d)
        assert_unchanged(before, eng)
        return
    assert (site_usage(eng, d) <= eng.capacity).all(), "the engine accepted a site above its capacity"
    link = np.zeros_like(eng.link_mb)
    for i, src, dst, n in d.moves:
        link[src, dst] += n * eng.block_mb[i]
    assert ((eng.link_mb == 0) | (link <= eng.link_mb + 1e-9)).all(), "the engine accepted a full link"
    parts = (eng.latency_cost.sum(), eng.transfer_cost.sum(), eng.exchange_cost.sum())
    paid = ref.play(eng, d, slot)
    cost = eng.step(d)
    returns.append(cost)
    moved = eng.transfer_cost.sum() + eng.exchange_cost.sum() - parts[1] - parts[2]
    assert moved == pytest.approx(paid, abs=1e-9)
    assert eng.latency_cost.sum() >= parts[0] - 1e-12 and cost >= -1e-12
    assert (eng.passes_left >= 0).all() and (eng.in_transit == 0).all()
    total = eng.blocks0.sum(axis=1) * eng.epochs
    np.testing.assert_array_equal(eng.passes_left.sum(axis=1) + eng.in_transit.sum(axis=1) + eng.passes_done, total)
    for i in range(eng.J):
        assert eng.passes_left[i].tolist() == ref.passes_left(i), f"job {i}: passes left differ from the blocks"
        assert ref.done[i] + sum(len(s) for s in ref.at[i]) == eng.blocks0[i].sum(), f"job {i} lost a block"
    np.testing.assert_array_equal(eng.completion, ref.completion)


def check_latency(eng: GeoEngine) -> None:
    for i, job in enumerate(eng.jobs):
        t = eng.completion[i] + 1 - job.arrival if eng.completion[i] >= 0 else eng.slot - job.arrival
        expected = job.latency(t) if t > 0 else 0.0  # f(JCT), f(the slots so far), nothing before arrival
        assert eng.latency_cost[i] == pytest.approx(expected, rel=1e-9, abs=1e-9), f"job {i}"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), p_bad=st.floats(0.0, 0.8))
def test_invariants_under_random_and_adversarial_decisions(name, seed, p_bad):
    eng = GeoEngine(SCENARIOS[name]())
    eng.reset(seed)
    ref, rng, returns = Blocks(eng), np.random.default_rng(seed), []
    while not eng.done:
        d = random_bad(eng, rng) if rng.random() < p_bad else random_valid(eng, rng)
        check_step(eng, ref, d, returns)
        check_latency(eng)
    assert sum(returns) == pytest.approx(eng.total_cost(), rel=1e-9)
    parts = eng.latency_cost.sum() + eng.transfer_cost.sum() + eng.exchange_cost.sum()
    assert eng.total_cost() == pytest.approx(parts)
    assert min(eng.latency_cost.min(), eng.transfer_cost.min(), eng.exchange_cost.min()) >= 0
    for i, rec in enumerate(eng.records()):
        if rec["completion"] >= 0:  # every block had exactly its epochs of passes
            assert eng.passes_done[i] == eng.blocks0[i].sum() * eng.epochs[i]
            assert ref.done[i] == eng.blocks0[i].sum() and not any(ref.at[i])
            assert rec["latency_cost"] == pytest.approx(eng.jobs[i].latency(rec["jct"]))
        else:
            assert eng.truncated


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), a=st.integers(0, 100), b=st.integers(0, 100))
def test_jobs_of_a_seed_are_fixed_and_do_not_depend_on_the_decisions(seed, a, b):
    sc = load_geo_scenario("geo-6")
    assert draw_jobs(sc, seed) == draw_jobs(sc, seed)
    assert draw_jobs(sc, seed) != draw_jobs(sc, seed + 1)
    seen = []
    for action_seed in (a, b):
        eng, rng = GeoEngine(sc), np.random.default_rng(action_seed)
        eng.reset(seed)
        for _ in range(15):
            eng.step(random_valid(eng, rng))
        seen.append(eng.jobs)
    assert seen[0] == seen[1] == draw_jobs(sc, seed)


# ----------------------------------------------------------------------------- single rules
def job(arrival=0, blocks=(2, 0, 0), block_mb=80.0, epochs=1, rate=1, worker=(0, 1), ps=(0, 1), exchange_mb=50.0,
        latency=LINEAR) -> GeoJob:
    return GeoJob(arrival=arrival, blocks=blocks, block_mb=block_mb, epochs=epochs, blocks_per_slot=rate,
                  worker=worker, ps=ps, exchange_mb=exchange_mb, latency=latency)


def engine(*jobs: GeoJob, **changes) -> GeoEngine:
    eng = GeoEngine(tiny(**changes))  # cost 0-1: 2, 0-2: 5, 1-2: 3; links 0->1 200 MB, 0->2 unlimited
    eng.reset(0, jobs)
    return eng


def place(ps: int, *workers: int, moves=()) -> GeoDecision:
    return GeoDecision(placements={0: (ps, np.array(workers, dtype=np.int64))}, moves=tuple(moves))


def test_a_moved_block_arrives_at_the_end_of_its_slot_and_trains_from_the_next():
    eng = engine(job(blocks=(2, 0, 0)))
    cost = eng.step(place(1, 0, 1, 0, moves=[(0, 0, 1, 1)]))  # a worker waits at the destination
    assert eng.passes_left[0].tolist() == [1, 1, 0] and eng.passes_done[0] == 0
    assert eng.transfer_cost[0] == pytest.approx(2.0 * 80.0 / 100)  # q * MB / 100
    assert cost == pytest.approx(eng.transfer_cost[0] + job().latency(1))  # f(1) in the arrival slot
    eng.step(place(1, 0, 1, 0))
    assert eng.passes_left[0].tolist() == [1, 0, 0] and eng.passes_done[0] == 1


def test_transfer_cost_is_q_times_mb_over_100_per_block_on_an_unlimited_link():
    eng = engine(job(blocks=(3, 0, 0), block_mb=120.0))
    eng.step(GeoDecision(moves=((0, 0, 2, 3),)))  # link 0->2 is unlimited (0)
    assert eng.transfer_cost[0] == pytest.approx(5.0 * 120.0 * 3 / 100)
    assert eng.mb_moved[0] == pytest.approx(360.0) and eng.passes_left[0].tolist() == [0, 0, 3]


def test_exchange_cost_is_zero_at_the_ps_site_and_q_lambda_per_worker_elsewhere():
    eng = engine(job(blocks=(4, 4, 0), exchange_mb=50.0, rate=1), job(blocks=(4, 0, 0)))
    eng.step(place(0, 2, 0, 0))
    assert eng.exchange_cost[0] == 0.0
    eng.step(place(2, 2, 1, 0))  # PS at site 2: two workers at 0 (q 5), one at 1 (q 3)
    assert eng.exchange_cost[0] == pytest.approx((2 * 5.0 + 1 * 3.0) * 50.0 / 100)


def test_link_capacity_refuses_a_move_above_it_and_counts_all_jobs_on_the_link():
    eng = engine(job(blocks=(3, 0, 0), block_mb=80.0), job(blocks=(1, 0, 0), block_mb=50.0))
    before = snapshot(eng)
    with pytest.raises(GeoActionError, match="link 0->1 would carry 240 MB this slot, above its 200 MB"):
        eng.step(GeoDecision(moves=((0, 0, 1, 3),)))
    with pytest.raises(GeoActionError, match="link 0->1"):  # 160 + 50 MB of two jobs on one link
        eng.step(GeoDecision(moves=((0, 0, 1, 2), (1, 0, 1, 1))))
    assert_unchanged(before, eng)
    eng.step(GeoDecision(moves=((0, 0, 1, 2),)))  # 160 MB: within the link
    eng.step(GeoDecision(moves=((0, 0, 1, 1), (1, 0, 2, 1))))  # a new slot, a new link budget
    assert eng.passes_left[:, 1].tolist() == [3, 0] and eng.passes_left[1, 2] == 1


def test_only_untouched_blocks_move():
    eng = engine(job(blocks=(2, 0, 0), epochs=3, rate=2))
    eng.step(place(0, 1, 0, 0))  # 2 of the first block's 3 passes: one block untouched
    assert eng.movable_blocks(0).tolist() == [1, 0, 0]
    with pytest.raises(GeoActionError, match="has 1 untouched blocks"):
        eng.step(GeoDecision(moves=((0, 0, 2, 2),)))
    eng.step(GeoDecision(moves=((0, 0, 2, 1),)))
    assert eng.passes_left[0].tolist() == [1, 0, 3]


def test_latency_cost_is_f_of_the_jct_and_unarrived_or_finished_jobs_cannot_be_placed():
    eng = engine(job(arrival=1, blocks=(1, 0, 0)), job(arrival=1, blocks=(5, 0, 0)), max_slots=4)
    with pytest.raises(GeoActionError, match="job 0 is not pending"):
        eng.step(place(0, 1, 0, 0))  # slot 0: not arrived
    eng.step(GeoDecision())
    eng.step(place(0, 1, 0, 0))  # slot 1: arrives and completes
    assert eng.completion[0] == 1 and eng.ps_site[0] == NO_SITE and not eng.workers[0].any()
    assert eng.records()[0]["jct"] == 1 and eng.latency_cost[0] == pytest.approx(2.0 * 1 + 1.0)
    with pytest.raises(GeoActionError, match="job 0 is not pending"):
        eng.step(place(0, 1, 0, 0))
    eng.step(GeoDecision())
    eng.step(GeoDecision())
    assert eng.done and eng.truncated and eng.completion[1] == -1
    assert eng.latency_cost[1] == pytest.approx(2.0 * (4 - 1) + 1.0)  # f(max_slots - arrival)


@pytest.mark.parametrize("key, ps, match", [(0, 1.0, "PS site"), (0, 1.5, "PS site"), (0, True, "PS site"),
                                            (True, 0, "placement key True"), (1.0, 0, "placement key 1.0")])
def test_a_ps_site_or_job_key_that_is_no_integer_is_a_geo_action_error(key, ps, match):
    eng = engine(job(), job())  # job 1 pending: True must not read as it
    with pytest.raises(GeoActionError, match=match):
        eng.step(GeoDecision(placements={key: (ps, np.array([1, 0, 0]))}))


@pytest.mark.parametrize("change, field", [
    ({"epochs": 0}, "epochs"), ({"rate": 0}, "blocks_per_slot"), ({"blocks": (3, -1, 0)}, "blocks"),
    ({"blocks": (0, 0, 0)}, "blocks"), ({"worker": (0, -1)}, "worker"), ({"ps": (-1, 1)}, "ps"),
    ({"block_mb": -1.0}, "block_mb"), ({"exchange_mb": -0.5}, "exchange_mb"), ({"arrival": -1}, "arrival"),
    ({"arrival": 120}, "arrival"), ({"blocks": (1, 1)}, "blocks has 2 entries"), ({"ps": (0, 1, 1)}, "ps has 3")])
def test_explicit_jobs_that_cannot_run_are_refused_naming_job_and_field(change, field):
    with pytest.raises(ValueError, match=rf"job 1: {field}.*Fix: "):  # tiny: 3 sites, 2 resources, 120 slots
        engine(job(), job(**change))


def test_iterators_in_a_decision_are_read_once_so_validation_does_not_use_them_up():
    eng = engine(job(blocks=(2, 0, 0)))
    d = GeoDecision(placements=iter([(0, (0, np.array([0, 0, 0])))]), moves=iter([(0, 0, 2, 1)]))
    eng.step(d)
    assert eng.passes_left[0].tolist() == [1, 0, 1] and d.moves == ((0, 0, 2, 1),)


def test_a_link_just_over_its_capacity_prints_every_digit_and_the_tolerance_is_public():
    over = 200.0 + 2 * LINK_TOLERANCE_MB  # tiny's link 0->1 carries 200 MB
    with pytest.raises(GeoActionError, match=re.escape(f"carry {over!r} MB this slot, above its 200 MB")):
        engine(job(block_mb=over)).step(GeoDecision(moves=((0, 0, 1, 1),)))
    eng = engine(job(block_mb=200.0 + LINK_TOLERANCE_MB / 2))  # within the tolerance: float noise
    eng.step(GeoDecision(moves=((0, 0, 1, 1),)))
    assert eng.passes_left[0].tolist() == [1, 1, 0]


@pytest.mark.parametrize("scale", [0.01, 1e-3, 3.0])
def test_the_sigmoid_never_overflows_and_is_the_textbook_formula(scale):
    f = LatencyCost(kind="sigmoid", weight=500.0, midpoint=20.0, scale=scale)
    ts = [0, 5, 19, 20, 21, 40, 1000]
    values = [f(t) for t in ts]
    assert all(math.isfinite(v) and 0.0 <= v <= 500.0 for v in values) and values == sorted(values)
    for t, v in zip(ts, values):
        x = -(t - 20.0) / scale
        assert v == pytest.approx(500.0 / (1.0 + math.exp(x)) if x < 700 else 0.0, rel=1e-12, abs=1e-300)
