"""`rollout` (multi-agent rollout over greedy), the engine fork it plans on, and the futures it
imagines: a fork with the true future replays the episode exactly; a fork shares nothing with
its parent; the present view holds no future task; futures come from the arrival model only; and
the policy's decisions do not depend on the episode's future."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from agents.heuristics.futures import FutureSampler
from agents.heuristics.greedy import GreedyPolicy
from agents.registry import make_policy
from envs.episode import EpisodeRun, decide, present_view, run_episode
from envs.observations import build_observations
from tapfinger.sim.engine import Engine
from tapfinger.sim.workload import Workload, make_workload
from tests.helpers import small


def _tail(wl: Workload, start: int) -> Workload:
    return Workload(arrival_slot=wl.arrival_slot[start:], task_type=wl.task_type[start:],
                    visible=wl.visible[start:], work=wl.work[start:], deadline=wl.deadline[start:],
                    work_estimate=None if wl.work_estimate is None else wl.work_estimate[start:])


def _play_greedy(engine: Engine, policy: GreedyPolicy, slots: int | None = None) -> None:
    done_slots = 0
    while not engine.done and (slots is None or done_slots < slots):
        if policy.act(build_observations(engine)).play(engine):
            done_slots += 1


@pytest.mark.parametrize("name", ["hetero-6", "synthetic-3", "edge-default"])
def test_fork_with_the_true_future_replays_the_episode_exactly(name):
    sc = small(name, tasks=60)
    eng = Engine(sc)
    eng.reset(5)
    g = GreedyPolicy(sc)
    g.reset(5)
    _play_greedy(eng, g, slots=4)
    g.act(build_observations(eng)).play(eng)  # one more round: the fork is taken within a slot
    fork = eng.fork(_tail(eng.workload, eng.next_arrival))
    g2 = copy.deepcopy(g)
    _play_greedy(eng, g)
    _play_greedy(fork, g2)
    a, b = eng.task_records(), fork.task_records()
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    assert fork.slot == eng.slot and fork.done


def test_fork_shares_nothing_mutable_with_its_parent():
    sc = small("hetero-6", tasks=40)
    eng = Engine(sc)
    eng.reset(1)
    g = GreedyPolicy(sc)
    _play_greedy(eng, g, slots=2)
    before = {k: (v.copy() if isinstance(v, np.ndarray) else copy.deepcopy(v)) for k, v in vars(eng).items()
              if k not in ("static", "scenario", "workload")}
    fork = eng.fork()
    _play_greedy(fork, copy.deepcopy(g))
    assert fork.done
    for k, v in before.items():
        now = getattr(eng, k)
        if isinstance(v, np.ndarray):
            assert np.array_equal(v, now), k
        else:
            assert v == now, k


def test_present_view_holds_no_future_task_and_refuses_a_future_in_the_past():
    sc = small("hetero-6", tasks=80)
    run = EpisodeRun(sc, 3)
    g = GreedyPolicy(sc)
    for _ in range(3):
        run.play(g.act(run.observe()))
    view = present_view(run.engine)
    assert view.T == run.engine.next_arrival < run.engine.T
    assert view.workload.num_tasks == view.T
    assert np.array_equal(view.window, np.where(run.engine.window == run.engine.empty, view.empty, run.engine.window))
    past = _tail(run.engine.workload, run.engine.next_arrival)
    past = dataclasses.replace(past, arrival_slot=np.full(past.num_tasks, view.slot))
    with pytest.raises(ValueError, match="after slot"):
        view.fork(past)


def test_present_view_knows_work_by_its_estimate():
    sc = small("hetero-6", tasks=40)
    eng = Engine(sc)
    wl = make_workload(sc, 0)
    eng.reset(0, workload=dataclasses.replace(wl, work=wl.work * 2.0, work_estimate=wl.work * 0.5))
    view = present_view(eng)
    arrived = eng.next_arrival
    assert np.allclose(view.work[:arrived], 0.5) and np.allclose(eng.work[:arrived], 2.0)


def test_futures_come_from_the_arrival_model_after_the_present():
    sc = small("hetero-6", tasks=100)
    sampler = FutureSampler(sc)
    a = sampler.sample(7, 40, np.random.default_rng(11), horizon=5)
    b = sampler.sample(7, 40, np.random.default_rng(11), horizon=5)
    assert np.array_equal(a.arrival_slot, b.arrival_slot) and np.array_equal(a.task_type, b.task_type)
    assert a.num_tasks > 0 and a.arrival_slot.min() >= 8 and a.arrival_slot.max() <= 12
    assert sampler.sample(7, 100, np.random.default_rng(0), horizon=5).num_tasks == 0  # the count is reached
    near_end = sampler.sample(7, 98, np.random.default_rng(0), horizon=50)
    assert near_end.num_tasks <= 2
    counts = [sampler.sample(0, 0, np.random.default_rng(s), horizon=10).num_tasks for s in range(200)]
    assert abs(np.mean(counts) - 60.0) < 5 * np.sqrt(60.0 / 200)  # Poisson(6) per slot, 10 slots


def test_trace_futures_use_the_traces_statistics_not_its_order():
    from tests.helpers import load_or_skip

    sc = load_or_skip("philly-edge")
    sampler = FutureSampler(sc)
    wl = make_workload(sc, 0)
    fut = sampler.sample(0, 0, np.random.default_rng(3), horizon=200)
    assert fut.num_tasks > 0
    assert set(np.unique(fut.task_type)) <= set(np.unique(wl.task_type))
    span = int(wl.arrival_slot.max()) + 1
    expect = wl.num_tasks / span * 200
    assert abs(fut.num_tasks - min(expect, wl.num_tasks)) < 6 * np.sqrt(expect) + 2


def test_rollout_with_one_candidate_is_greedy():
    sc = small("hetero-6", tasks=40)
    g = run_episode(sc, make_policy("greedy", sc), 4)
    r = run_episode(sc, make_policy("rollout", sc, candidates=1), 4)
    for key in g.records:
        assert np.array_equal(g.records[key], r.records[key]), key


def test_rollout_is_deterministic_valid_and_at_least_sometimes_departs_from_greedy():
    sc = small("hetero-6", tasks=40)
    p = make_policy("rollout", sc, horizon=4, drain=8)
    a, b = run_episode(sc, p, 9), run_episode(sc, p, 9)
    assert a.invalid_actions == 0 and not a.truncated
    assert np.array_equal(a.records["start"], b.records["start"])
    greedy = run_episode(sc, make_policy("greedy", sc), 9)
    assert not np.array_equal(a.records["start"], greedy.records["start"])


def test_rollout_decisions_do_not_depend_on_the_episodes_future():
    """Two episodes equal up to slot 3 and different after it: rollout's first three slots agree."""
    sc = small("hetero-6", tasks=60)
    wl = make_workload(sc, 2)
    cut = int(np.searchsorted(wl.arrival_slot, 4))
    other = make_workload(sc, 99)
    changed = Workload(
        arrival_slot=np.r_[wl.arrival_slot[:cut], np.maximum(other.arrival_slot[cut:], 4)],
        task_type=np.r_[wl.task_type[:cut], other.task_type[cut:]],
        visible=np.r_[wl.visible[:cut], other.visible[cut:]], work=np.ones(wl.num_tasks),
        deadline=np.full(wl.num_tasks, -1))
    assert not np.array_equal(changed.task_type, wl.task_type)
    starts = []
    for w in (wl, changed):
        p = make_policy("rollout", sc, horizon=6, drain=8)
        p.reset(2)
        run = EpisodeRun(sc, 2, workload=w)
        while run.engine.slot < 3:
            run.play(decide(p, run))
        starts.append(run.engine.start[: cut].copy())
    assert np.array_equal(starts[0], starts[1])


def test_rollout_without_the_present_says_how_to_drive_it():
    sc = small("hetero-6", tasks=20)
    p = make_policy("rollout", sc)
    run = EpisodeRun(sc, 0)
    with pytest.raises(RuntimeError, match="present"):
        for _ in range(20):
            run.play(p.act(run.observe()))


def test_rollout_refuses_bad_settings():
    sc = small("hetero-6", tasks=20)
    with pytest.raises(ValueError, match="horizon"):
        make_policy("rollout", sc, horizon=0)
