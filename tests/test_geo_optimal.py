"""The exact offline optimum of small geo episodes (tapfinger/evaluation/geo_optimal.py): its
schedule replayed in the engine costs exactly the program's objective, it is never above a policy's
cost, it matches optima worked out by hand, and it refuses instances too large for it."""

from __future__ import annotations

import time

import numpy as np
import pytest

from agents.geo.base import GeoPolicy
from agents.geo.registry import make_geo_policy
from envs.geo_episode import run_geo_episode
from tapfinger.evaluation.geo_instances import (SMALL_ARRIVAL_SLOTS, small_geo_instance, small_geo_scenario,
                                                small_geo_table)
from tapfinger.evaluation.geo_optimal import (MAX_VARIABLES, GeoInstanceTooLargeError, geo_optimal,
                                              replay_geo_optimum)
from tapfinger.evaluation.geo_optimal_model import build_program, count_variables
from tapfinger.sim.geo.engine import GeoDecision, GeoEngine
from tapfinger.sim.geo.model import GeoJob, LatencyCost
from tapfinger.sim.geo.scenario import draw_jobs, load_geo_scenario, parse_geo_scenario

# Two jobs over 10 slots solve in about a quarter of a second each; the sigmoid default and the
# other two latency kinds (piecewise has zero increments, where completion must still be exact);
# and three instances of the default size (3 jobs, 16 slots), about 0.3 s each.
SEEDS = range(10)
DEFAULT_SIZE_SEEDS = range(3)
KINDS = {"sigmoid": {}, "linear": {"latency_tau": [1.0, 30.0]},
         "piecewise": {"latency_tau2": [100.0, 500.0], "latency_deadline": [1.0, 4.0]}}


def instance(seed: int, kind: str = "sigmoid"):
    if kind == "sigmoid":
        return small_geo_instance(seed, jobs=2, max_slots=10)
    table = small_geo_table(seed, jobs=2, max_slots=10)
    for key in ("latency_weight", "latency_midpoint", "latency_scale"):
        del table["jobs"][key]
    table["jobs"].update(latency=kind, **KINDS[kind])
    sc = parse_geo_scenario(table, f"<test {kind} {seed}>")
    return sc, draw_jobs(sc, seed)


@pytest.fixture(scope="module")
def solved():
    out = [(seed, "sigmoid", *instance(seed)) for seed in SEEDS]
    out += [(seed, kind, *instance(seed, kind)) for kind in ("linear", "piecewise") for seed in range(3)]
    out += [(seed, "default size", *small_geo_instance(seed)) for seed in DEFAULT_SIZE_SEEDS]
    return [(seed, kind, sc, jobs, geo_optimal(sc, jobs)) for seed, kind, sc, jobs in out]


def test_the_schedule_replays_in_the_engine_at_the_programs_cost(solved):
    moved = 0
    for seed, kind, sc, jobs, opt in solved:
        # every decision accepted, passes left equal to the program's after every slot
        eng = replay_geo_optimum(sc, jobs, opt)
        assert eng.total_cost() == pytest.approx(opt.cost, rel=1e-6, abs=1e-9), (seed, kind)
        assert float(eng.latency_cost.sum()) == pytest.approx(opt.latency_cost, rel=1e-6, abs=1e-9)
        assert float(eng.transfer_cost.sum()) == pytest.approx(opt.transfer_cost, rel=1e-6, abs=1e-9)
        assert float(eng.exchange_cost.sum()) == pytest.approx(opt.exchange_cost, rel=1e-6, abs=1e-9)
        assert eng.completion.tolist() == opt.completion.tolist()
        assert opt.dual_bound <= opt.cost * (1 + 1e-6)
        moved += sum(len(d.moves) for d in opt.decisions)
    assert moved > 0, "no optimum moved data: the instances do not exercise moves"


class LocalPolicy(GeoPolicy):
    """A trivial valid policy: in arrival order, each job's PS at its biggest data site that holds
    it (else any), workers on its data sites while they fit and have data to train; no moves."""

    name = "local"

    def decide(self, eng: GeoEngine) -> GeoDecision:
        free = eng.capacity.copy()
        placements = {}
        for i in eng.pending():
            left = eng.passes_left[i]
            for ps in np.argsort(-left, kind="stable"):
                f = free.copy()
                f[ps] -= eng.ps_need[i]
                if np.any(f[ps] < 0):
                    continue
                w = np.zeros(eng.R, dtype=np.int64)
                for r in np.flatnonzero(left > 0):
                    useful = min(-(-int(left[r]) // int(eng.rate[i])), eng.scenario.max_workers_per_site)
                    while w[r] < useful and np.all(f[r] >= eng.worker_need[i]):
                        f[r] -= eng.worker_need[i]
                        w[r] += 1
                if w.sum():
                    placements[i], free = (int(ps), w), f
                    break
        return GeoDecision(placements=placements)


def test_the_optimum_is_never_above_a_valid_policy(solved):
    worse = 0
    for seed, kind, sc, jobs, opt in solved:
        res = run_geo_episode(sc, LocalPolicy(), seed, jobs=jobs)
        assert opt.cost <= res.total_cost * (1 + 1e-7), (seed, kind, opt.cost, res.total_cost)
        worse += res.total_cost > opt.cost * (1 + 1e-6)
    assert worse > 0, "the trivial policy matched the optimum everywhere: the instances are too easy"


HEURISTICS = ("okita", "oasis", "drf", "fifo")


@pytest.mark.parametrize("name", HEURISTICS)
def test_the_optimum_is_never_above_a_heuristic(solved, name):
    for seed, kind, sc, jobs, opt in solved:
        res = run_geo_episode(sc, make_geo_policy(name), seed, jobs=jobs)
        assert opt.cost <= res.total_cost * (1 + 1e-7), (name, seed, kind, opt.cost, res.total_cost)


# ----------------------------------------------------------------------------- by hand


def two_sites(link_mb: float, max_slots: int = 30):
    """Site 0 holds a worker or a PS, not both; site 1 holds both. Bandwidth cost 4 per 100 MB. By
    default the horizon is long enough that leaving the job unfinished (cost f(30) = 30) never pays."""
    table = {"name": "hand", "family": "geo", "resources": ["gpu", "cpu"], "max_slots": max_slots,
             "max_workers_per_site": 1,
             "sites": {"capacity": [[1, 1], [1, 2]], "cost": [[0.0, 4.0], [4.0, 0.0]],
                       "link_mb": [[0.0, link_mb], [link_mb, 0.0]]},
             "jobs": {"count": 1, "arrival_slots": 1, "block_mb": [100.0, 100.0], "worker_low": [1, 1],
                      "worker_high": [1, 1], "ps_low": [0, 1], "ps_high": [0, 1]}}
    return parse_geo_scenario(table, "<hand>")


def hand_job(exchange_mb: float) -> GeoJob:
    # two 100 MB blocks at site 0, one epoch, one worker trains both in a slot; f(t) = t
    return GeoJob(arrival=0, blocks=(2, 0), block_mb=100.0, epochs=1, blocks_per_slot=2, worker=(1, 1), ps=(0, 1),
                  exchange_mb=exchange_mb, latency=LatencyCost(kind="linear", tau=1.0, b=0.0))


@pytest.mark.parametrize("exchange_mb, link_mb", [(300.0, 0.0), (100.0, 0.0), (300.0, 100.0)])
def test_move_the_data_or_exchange_across_the_link(exchange_mb, link_mb):
    # A worker at the data (site 0) needs its PS at site 1: JCT 1, cost f(1) + 4 * exchange / 100.
    # Else both blocks move to site 1 (transfer 4 * 2 * 100 / 100 = 8) and train there beside the PS
    # (no exchange): JCT 2 over an unlimited link, JCT 3 over a link of one block per slot.
    sc, job = two_sites(link_mb), hand_job(exchange_mb)
    exchange = 1.0 + 4.0 * exchange_mb / 100.0
    move = (2.0 if link_mb == 0 else 3.0) + 8.0
    opt = geo_optimal(sc, (job,))
    assert opt.cost == pytest.approx(min(exchange, move), rel=1e-9)
    if move < exchange:
        assert opt.transfer_cost == pytest.approx(8.0) and opt.exchange_cost == 0.0
        assert opt.completion.tolist() == [1 if link_mb == 0 else 2]
    else:
        assert opt.transfer_cost == 0.0 and opt.decisions[0].placements[0][0] == 1
    assert replay_geo_optimum(sc, (job,), opt).total_cost() == pytest.approx(opt.cost, rel=1e-9)


def test_a_job_left_unfinished_pays_f_of_the_horizon():
    # Over 8 slots, never running costs f(8) = 8, below moving (10) and exchanging (13): the engine
    # charges an unfinished job f(max_slots - arrival), and so does the program.
    sc, job = two_sites(0.0, max_slots=8), hand_job(300.0)
    opt = geo_optimal(sc, (job,))
    assert opt.cost == pytest.approx(8.0) and opt.completion.tolist() == [-1]
    assert len(opt.decisions) == 8 and not any(d.placements or d.moves for d in opt.decisions)
    eng = replay_geo_optimum(sc, (job,), opt)
    assert eng.truncated and eng.total_cost() == pytest.approx(8.0)


# ----------------------------------------------------------------------------- refusal


def test_too_large_instances_are_refused_before_anything_is_built():
    sc = load_geo_scenario("geo-6")
    jobs = draw_jobs(sc, 0)
    assert count_variables(sc, jobs) > MAX_VARIABLES
    t0 = time.perf_counter()
    with pytest.raises(GeoInstanceTooLargeError, match="MAX_VARIABLES.*Fix"):
        geo_optimal(sc, jobs)
    assert time.perf_counter() - t0 < 1.0
    small = small_geo_scenario(0)
    with pytest.raises(GeoInstanceTooLargeError, match=f"{count_variables(small, draw_jobs(small, 0))} variables"):
        geo_optimal(small, draw_jobs(small, 0), max_variables=100)


def test_small_instances_are_seeded():
    a, b, c = small_geo_instance(3), small_geo_instance(3), small_geo_instance(4)
    assert a == b
    assert a != c
    assert a[0].num_sites == 3 and len(a[1]) == 3


@pytest.mark.parametrize("sites, jobs, slots", [(3, 3, 16), (2, 1, 5), (4, 2, 9), (3, 4, 12)])
def test_the_variable_count_is_the_built_programs(sites, jobs, slots):
    # The size check counts before building; it must count what the builder allocates.
    for seed in range(3):
        sc, jb = small_geo_instance(seed, sites, jobs, slots)
        assert count_variables(sc, jb) == build_program(sc, jb).cols.size, (sites, jobs, slots, seed)


def test_a_horizon_shorter_than_the_arrivals_is_refused():
    small_geo_scenario(0, max_slots=SMALL_ARRIVAL_SLOTS)  # the last arrival slot still has a slot to run
    with pytest.raises(ValueError, match=f"below the {SMALL_ARRIVAL_SLOTS} arrival slots.*Fix: max_slots >= "):
        small_geo_scenario(0, max_slots=SMALL_ARRIVAL_SLOTS - 1)
