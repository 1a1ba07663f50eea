"""The geo heuristics (issue 16, item 4): fifo, drf, oasis, okita, okita-np.

Every decision passes the engine's own check (geo-6 and geo-50, several seeds); every job of geo-6
finishes; decisions depend only on arrived jobs (no clairvoyance); the same seed gives the same
episode; okita is cheaper than fifo on average over geo-6; okita-np never moves a started job's PS
or worker sites; jobs whose data sits where no worker fits still finish; the shared helpers keep
links and untouched blocks, and clip moves to a link exactly as the engine does; the registry's
names, errors and lazy imports."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from agents.geo.base import GeoPolicy
from agents.geo.placement import SlotPlan, greedy_moves, job_view, room
from agents.geo.registry import GEO_POLICY_NAMES, geo_policy_names, make_geo_policy, register_geo_policy
from envs.geo_episode import run_geo_episode
from tapfinger.sim.geo.engine import GeoDecision, GeoEngine
from tapfinger.sim.geo.scenario import draw_jobs, load_geo_scenario, parse_geo_scenario

REPO = Path(__file__).resolve().parent.parent
GEO6 = load_geo_scenario("geo-6")
GEO50 = load_geo_scenario("geo-50")


class Checked(GeoPolicy):
    """Wraps a policy: asserts that each decision passes `decision_problem` and records it."""

    def __init__(self, inner: GeoPolicy):
        self.inner, self.name, self.log = inner, inner.name, []

    def reset(self, scenario, seed):
        self.inner.reset(scenario, seed)
        self.log = []

    def decide(self, engine):
        decision = self.inner.decide(engine)
        problem = engine.decision_problem(decision)
        assert problem is None, f"{self.name}, slot {engine.slot}: {problem}"
        self.log.append((engine.slot, _canonical(decision)))
        return decision


def _canonical(decision) -> tuple:
    placements = tuple(sorted((int(i), int(ps), tuple(int(w) for w in workers))
                              for i, (ps, workers) in decision.placements.items()))
    return placements, tuple(tuple(int(v) for v in m) for m in decision.moves)


def play(scenario, name: str, seed: int, jobs=None, policy: GeoPolicy | None = None):
    checked = Checked(policy or make_geo_policy(name))
    return run_geo_episode(scenario, checked, seed, jobs=jobs), checked.log


# ---------------------------------------------------------------------------- validity
@pytest.mark.parametrize("name", GEO_POLICY_NAMES)
def test_every_decision_is_valid_and_every_job_finishes_on_geo6(name):
    for seed in range(6):
        result, log = play(GEO6, name, seed)
        assert not result.truncated and result.unfinished == 0, (name, seed)
        assert result.slots < GEO6.max_slots
        assert sum(1 for _, (placed, _) in log if placed) > 0


@pytest.mark.parametrize("name", GEO_POLICY_NAMES)
def test_every_decision_is_valid_on_geo50(name):
    for seed in (0, 1):
        result, _ = play(GEO50, name, seed)
        assert result.unfinished == 0 and not result.truncated, (name, seed)


def test_the_cost_ledger_adds_up_for_every_policy():
    for name in GEO_POLICY_NAMES:
        r, _ = play(GEO6, name, 2)
        assert r.total_cost == pytest.approx(r.latency_cost + r.transfer_cost + r.exchange_cost)
        assert r.total_cost > 0


def test_simple_policies_move_no_data_when_no_job_is_stranded():
    for name in ("fifo", "drf"):
        result, log = play(GEO6, name, 0)
        assert result.mb_moved == 0.0 and all(not moves for _, (_, moves) in log)


# ---------------------------------------------------------------------------- no clairvoyance
def _diverging_jobs(seed: int):
    """Two job tuples equal up to the first arrival at or after slot 8, different from there on."""
    jobs = draw_jobs(GEO6, seed)
    k = next(k for k, j in enumerate(jobs) if j.arrival >= 8 and j.arrival > jobs[k - 1].arrival)
    split = jobs[k].arrival
    others = tuple(replace(j, arrival=max(j.arrival, split)) for j in draw_jobs(GEO6, seed + 1000))
    return jobs, jobs[:k] + others[k:], split


@pytest.mark.parametrize("name", GEO_POLICY_NAMES)
def test_decisions_before_a_later_arrival_do_not_depend_on_it(name):
    jobs_a, jobs_b, split = _diverging_jobs(4)
    assert jobs_a[:3] == jobs_b[:3] and jobs_a != jobs_b
    _, log_a = play(GEO6, name, 4, jobs=jobs_a)
    _, log_b = play(GEO6, name, 4, jobs=jobs_b)
    before_a = [d for slot, d in log_a if slot < split]
    before_b = [d for slot, d in log_b if slot < split]
    assert len(before_a) == split and any(placed for placed, _ in before_a)
    assert before_a == before_b
    assert log_a != log_b  # the later jobs do change what comes after


# ---------------------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", GEO_POLICY_NAMES)
def test_same_seed_same_episode_fresh_or_reused_policy(name):
    first, log1 = play(GEO6, name, 5)
    policy = make_geo_policy(name)
    play(GEO6, name, 7, policy=policy)  # an episode before: reset must forget it
    again, log2 = play(GEO6, name, 5, policy=policy)
    assert log1 == log2
    assert first.total_cost == again.total_cost and first.records == again.records


# ---------------------------------------------------------------------------- quality
def test_okita_is_cheaper_than_fifo_on_average_over_geo6():
    seeds = range(10)
    okita = [play(GEO6, "okita", s)[0].total_cost for s in seeds]
    fifo = [play(GEO6, "fifo", s)[0].total_cost for s in seeds]
    assert np.mean(okita) < np.mean(fifo), (np.mean(okita), np.mean(fifo))


def test_okita_moves_data_when_moving_is_cheaper_than_exchange():
    """A job whose blocks are small and whose exchange is heavy: training remotely costs more than
    moving, so okita moves, and pays less than fifo (which only trains in place)."""
    job = replace(draw_jobs(GEO6, 0)[0], arrival=0, blocks=(3, 0, 3, 0, 0, 3), block_mb=50.0,
                  exchange_mb=375.0, blocks_per_slot=2, epochs=3)
    okita, _ = play(GEO6, "okita", 0, jobs=(job,))
    fifo, _ = play(GEO6, "fifo", 0, jobs=(job,))
    assert okita.mb_moved > 0 and okita.total_cost < fifo.total_cost


def _started_sites(log) -> dict[int, tuple[int, set[int]]]:
    """job -> (PS site, worker sites) of its first slot with workers."""
    start: dict[int, tuple[int, set[int]]] = {}
    for _, (placed, _) in log:
        for i, ps, workers in placed:
            if i not in start and sum(workers) > 0:
                start[i] = (ps, {r for r, w in enumerate(workers) if w})
    return start


@pytest.mark.parametrize("scenario,seeds", [(GEO6, range(6)), (GEO50, (0,))], ids=["geo-6", "geo-50"])
def test_okita_np_keeps_a_started_jobs_ps_and_worker_sites(scenario, seeds):
    for seed in seeds:
        _, log = play(scenario, "okita-np", seed)
        start = _started_sites(log)
        assert start
        for _, (placed, _) in log:
            for i, ps, workers in placed:
                if i in start:
                    assert ps == start[i][0], (seed, i)
                    assert {r for r, w in enumerate(workers) if w} <= start[i][1], (seed, i)


def test_preemptive_okita_does_move_a_ps_somewhere():
    """The check above could pass by accident; okita (preemptive) does re-place PSs on geo-6."""
    moved = 0
    for seed in range(6):
        _, log = play(GEO6, "okita", seed)
        start = _started_sites(log)
        moved += sum(1 for _, (placed, _) in log for i, ps, _ in placed if i in start and ps != start[i][0])
    assert moved > 0


# ---------------------------------------------------------------------------- stranded data
def _stranded_job():
    """Blocks only on sites 0 and 1, a worker needing 5 GPUs: on geo-6 only site 4 (6 GPUs) fits one."""
    assert GEO6.sites.capacity[4][0] == 6 and max(c[0] for i, c in enumerate(GEO6.sites.capacity) if i != 4) < 5
    return replace(draw_jobs(GEO6, 0)[0], arrival=0, blocks=(3, 2, 0, 0, 0, 0), worker=(5, 4, 10, 10),
                   ps=(0, 4, 8, 8), epochs=2, blocks_per_slot=2)


@pytest.mark.parametrize("name", GEO_POLICY_NAMES)
def test_a_job_whose_data_sites_cannot_host_a_worker_still_finishes(name):
    result, log = play(GEO6, name, 0, jobs=(_stranded_job(),))
    assert result.unfinished == 0 and not result.truncated
    assert result.mb_moved == pytest.approx(5 * _stranded_job().block_mb)
    assert all(d == 4 for _, (_, moves) in log for _, _, d, _ in moves)


# ---------------------------------------------------------------------------- rules
def _two_jobs_on_site_4():
    """Two equal jobs, all data on site 4 (6 GPUs), 2 GPUs a worker: room for 3 workers in all."""
    job = replace(draw_jobs(GEO6, 0)[0], arrival=0, blocks=(0, 0, 0, 0, 6, 0), worker=(2, 2, 5, 5),
                  ps=(0, 1, 2, 5), epochs=1, blocks_per_slot=1)
    return (job, job)


def test_fifo_serves_the_first_job_and_drf_shares_the_site():
    fifo, drf = (play(GEO6, n, 0, jobs=_two_jobs_on_site_4())[1][0][1][0] for n in ("fifo", "drf"))
    assert [(i, ps, w[4]) for i, ps, w in fifo] == [(0, 4, 3)]
    assert [(i, ps, w[4]) for i, ps, w in drf] == [(0, 4, 2), (1, 4, 1)]


def test_oasis_prices_start_at_the_low_end_and_grow_with_utilisation():
    from agents.geo.oasis import OasisPolicy

    eng = GeoEngine(GEO6)
    eng.reset(0)
    while len(eng.pending()) < 2:
        eng.step(make_geo_policy("fifo").decide(eng))
    policy = OasisPolicy()
    view = job_view(eng, eng.pending()[0])
    plan = SlotPlan(eng)
    opts = policy.options(view, eng, plan.free)
    low, high = policy.price_range(eng, [policy.best_on_capacity(job_view(eng, i), eng) for i in eng.pending()])
    assert np.all(low <= high) and np.any(low > 0)
    idle = policy.prices(plan, view, opts, low, high)
    expected = (opts.workers.sum(axis=1) * (low @ view.worker) + low @ view.ps) * opts.slots  # all at L
    assert np.allclose(idle, expected)
    other = job_view(eng, eng.pending()[1])
    plan.place(other.i, int(np.argmax(other.passes)), (other.passes > 0).astype(np.int64))
    assert np.all(policy.prices(plan, view, opts, low, high) >= idle - 1e-9)
    assert np.any(policy.prices(plan, view, opts, low, high) > idle)


# ---------------------------------------------------------------------------- helpers
def test_greedy_moves_keep_link_capacity_and_untouched_blocks():
    eng = GeoEngine(GEO6)
    job = replace(draw_jobs(GEO6, 0)[0], arrival=0, blocks=(6, 6, 0, 0, 0, 0), block_mb=200.0, epochs=2)
    eng.reset(0, (job,))
    eng.passes_left[0, 0] -= 1  # one block of site 0 partly trained: it may not move
    plan = SlotPlan(eng)
    view = job_view(eng, 0)
    targets = np.zeros(eng.R, dtype=bool)
    targets[[2, 3]] = True
    moved = greedy_moves(plan, view, targets)
    assert moved[0] <= 5 and moved[1] <= 6 and moved[2:].sum() == 0
    per_link = {}
    for _, s, d, n in plan.moves:
        per_link[s, d] = per_link.get((s, d), 0) + n * job.block_mb
    assert all(mb <= eng.link_mb[s, d] for (s, d), mb in per_link.items())
    assert eng.decision_problem(plan.decision()) is None
    greedy_moves(plan, view, targets)  # called again: neither the blocks nor the links are used twice
    assert eng.decision_problem(plan.decision()) is None


def test_room_counts_whole_workers_per_site():
    free = np.array([[4, 10], [1, 10], [8, 3]])
    assert room(free, np.array([2, 3]), cap=3).tolist() == [2, 0, 1]
    assert room(free, np.array([0, 0]), cap=3).tolist() == [3, 3, 3]


# ---------------------------------------------------------------------------- registry
def test_registry_names_order_and_errors():
    assert GEO_POLICY_NAMES == ("okita", "okita-np", "oasis", "drf", "fifo")
    assert geo_policy_names()[:5] == list(GEO_POLICY_NAMES)
    for name in GEO_POLICY_NAMES:
        assert isinstance(make_geo_policy(name), GeoPolicy) and make_geo_policy(name).name == name
    with pytest.raises(ValueError, match="okita, okita-np, oasis, drf, fifo"):
        make_geo_policy("nope")
    with pytest.raises(ValueError, match="does not take the options"):
        make_geo_policy("fifo", patience=2)
    with pytest.raises(ValueError, match="index_weights"):
        make_geo_policy("okita", index_weights=(1.0, -1.0, 0.0))
    assert make_geo_policy("okita", patience=0, weigh_delay=False).patience == 0


def test_a_later_module_can_register_a_policy():
    from agents.geo import registry

    before = dict(registry.GEO_FACTORIES)
    try:
        register_geo_policy("fifo-again", "agents.geo.simple:FifoPolicy")
        assert "fifo-again" in geo_policy_names() and make_geo_policy("fifo-again").name == "fifo"
        with pytest.raises(ValueError, match="module:attribute"):
            register_geo_policy("bad", "agents.geo.simple.FifoPolicy")
    finally:
        registry.GEO_FACTORIES.clear()
        registry.GEO_FACTORIES.update(before)


def test_geo_heuristics_never_import_torch():
    code = ("import sys\n"
            "from agents.geo.registry import GEO_POLICY_NAMES, make_geo_policy\n"
            "from envs.geo_episode import run_geo_episode\n"
            "from tapfinger.sim.geo.scenario import load_geo_scenario\n"
            "sc = load_geo_scenario('geo-6')\n"
            "for n in GEO_POLICY_NAMES:\n"
            "    run_geo_episode(sc, make_geo_policy(n), 0)\n"
            "loaded = [m for m in ('torch', 'torch_geometric') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def _one_link(link_mb: float):
    """Two sites joined by a link of `link_mb` MB per slot; one job with four 100 MB blocks at site 0."""
    table = {"name": "link", "family": "geo", "resources": ["gpu", "cpu"], "max_slots": 10,
             "max_workers_per_site": 1,
             "sites": {"capacity": [[1, 2], [1, 2]], "cost": [[0.0, 4.0], [4.0, 0.0]],
                       "link_mb": [[0.0, link_mb], [link_mb, 0.0]]},
             "jobs": {"count": 1, "arrival_slots": 1, "block_mb": [100.0, 100.0], "worker_low": [1, 1],
                      "worker_high": [1, 1], "ps_low": [0, 1], "ps_high": [0, 1]}}
    sc = parse_geo_scenario(table, "<one link>")
    job = replace(draw_jobs(sc, 0)[0], blocks=(4, 0), epochs=1)
    eng = GeoEngine(sc)
    eng.reset(0, (job,))
    return eng


@pytest.mark.parametrize("link_mb, blocks", [(299.9999995, 2), (300.0 - 1e-10, 3), (300.0, 3)])
def test_moves_are_clipped_to_a_link_exactly_as_the_engine_checks_it(link_mb, blocks):
    # 299.9999995 MB carries two 100 MB blocks: the engine refuses three (300 MB is more than
    # 5e-7 MB above it, beyond its float tolerance), so a policy must not plan them. Within the
    # tolerance (300 - 1e-10) the engine takes three, and so does the plan.
    eng = _one_link(link_mb)
    assert (eng.decision_problem(GeoDecision(moves=((0, 0, 1, 3),))) is None) == (blocks == 3)
    targets = np.array([False, True])
    plan = SlotPlan(eng)
    moved = greedy_moves(plan, job_view(eng, 0), targets)
    assert moved.tolist() == [blocks, 0] and eng.decision_problem(plan.decision()) is None
    plan = SlotPlan(eng)  # the clipping the learned policy applies to its teacher's moves
    assert plan.move(0, 0, 1, 4, 100.0) == blocks and plan.move(0, 0, 1, 4, 100.0) == 0
    assert eng.decision_problem(plan.decision()) is None
