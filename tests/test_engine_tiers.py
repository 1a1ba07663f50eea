"""The engine beyond the reference semantics (issue 14): deadlines, declines, capacity that follows a
schedule (preempt / shrink), restart and migration costs, edge speed factors, throughput tables.
Hand-computed cases first, then invariants under random and adversarial actions (hypothesis)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envs.actions import RoundActions, random_feasible, round_problem
from envs.observations import build_observations, observation_space
from tapfinger.sim.capacity import available_share, node_capacity_at
from tapfinger.sim.engine import DECLINED, FINISHED, RUNNING, WAITING, Engine, InvalidActionError
from tapfinger.sim.progress import throughput_tables
from tapfinger.sim.scenario import (Arrivals, CapacitySchedule, Cluster, Deadlines, ProgressSpec, Scenario,
                                    TaskType, scenario_fingerprint)
from tapfinger.sim.tables import static_tables
from tapfinger.sim.workload import Workload, make_workload

IMG = TaskType("IMG", (2, 1), ProgressSpec("synthetic", base=0.25))  # 4 slots at any allocation
# 10 iterations per second at 1 GPU, 16 at 2, 20 at 4; 1200 iterations: 4 slots of 30 s at 1 GPU on the cloud
RES = TaskType("RES", (1, 1), ProgressSpec("throughput", gpus=(1, 2, 4), iterations_per_second=(10.0, 16.0, 20.0),
                                           iterations=1200.0), edge_speed=0.5, request=(1, 2))


def scenario(clusters=None, types=(IMG,), **kw) -> Scenario:
    base = Scenario(name="tiers", resources=("cpu", "gpu"),
                    clusters=clusters or (Cluster("a", ((8, 4),)),), task_types=tuple(types),
                    arrivals=Arrivals(rate=1.0, tasks=4), grid_max=(8, 4), visibility="all", slot_seconds=30.0,
                    max_slots=500)
    return dataclasses.replace(base, **kw)


def workload(arrivals, types=None, deadlines=None, n=1) -> Workload:
    k = len(arrivals)
    return Workload(arrival_slot=np.asarray(arrivals, dtype=np.int64),
                    task_type=np.asarray(types or [0] * k, dtype=np.int64), visible=np.ones((k, n), dtype=bool),
                    work=np.ones(k), deadline=np.asarray(deadlines or [-1] * k, dtype=np.int64))


def act(eng: Engine, task=-1, node=0, alloc=(2, 1), decline=None, agent=0) -> bool:
    a = RoundActions.nothing(eng.N, eng.R)
    a.task[agent], a.node[agent], a.alloc[agent] = task, node, alloc
    if decline is not None:
        a.decline_place(agent, decline)
    return a.play(eng)


def end_slot(eng: Engine) -> None:
    assert act(eng)


# ----------------------------------------------------------------------------- deadlines
def test_deadline_met_iff_finished_before_the_deadline_slot_and_lateness_counts_slots():
    eng = Engine(scenario())
    # three IMG tasks (4 slots each) arriving at 0 with deadlines 4 (met: finishes at the end of slot 3),
    # 3 (late by one slot) and none (best effort)
    eng.reset(0, workload([0, 0, 0], deadlines=[4, 3, -1]))
    for place in range(3):
        act(eng, task=place)
    end_slot(eng)
    while not eng.done:
        end_slot(eng)
    rec = eng.task_records()
    assert rec["finish"].tolist() == [3, 3, 3]
    assert rec["met"].tolist() == [True, False, False]
    assert rec["lateness"].tolist() == [-1, 1, -1]
    assert not rec["declined"].any()


def test_a_miss_is_charged_at_the_slot_end_the_deadline_passes():
    eng = Engine(scenario())
    eng.reset(0, workload([0], deadlines=[2]))
    end_slot(eng)  # slot 0 ends: the deadline (slot 2) still holds
    assert eng.last_misses.tolist() == [0.0]
    end_slot(eng)  # slot 1 ends unfinished: it can no longer finish before slot 2
    assert eng.last_misses.tolist() == [1.0]
    end_slot(eng)
    assert eng.last_misses.tolist() == [0.0]  # charged once


def test_elasticflow_rule_draws_deadlines_from_the_requested_duration_without_changing_arrivals():
    base = scenario(types=(RES,), arrivals=Arrivals(rate=2.0, tasks=400))
    ruled = dataclasses.replace(base, deadlines=Deadlines("elasticflow", 0.5, 1.5, fraction=0.75))
    plain, wl = make_workload(base, 3), make_workload(ruled, 3)
    assert np.array_equal(plain.arrival_slot, wl.arrival_slot) and np.array_equal(plain.task_type, wl.task_type)
    assert (plain.deadline == -1).all()
    has = wl.deadline >= 0
    assert 0.65 < has.mean() < 0.85  # a quarter best effort
    # at the request (1 CPU, 2 GPUs) RES runs 16 it/s x 30 s = 480 of 1200 iterations a slot: 3 slots
    offset = wl.deadline[has] - wl.arrival_slot[has]
    assert set(offset.tolist()) <= {1, 2, 3, 4} and offset.min() == 1 and offset.max() == 4
    assert np.array_equal(make_workload(ruled, 3).deadline, wl.deadline)
    assert not np.array_equal(make_workload(ruled, 4).deadline[:50], wl.deadline[:50])


# ----------------------------------------------------------------------------- declines
def test_a_declined_task_leaves_every_window_and_counts_once_as_missed():
    scen = scenario(clusters=(Cluster("a", ((8, 4),)), Cluster("b", ((8, 4),))), allow_decline=True)
    eng = Engine(scen, strict=True)
    eng.reset(0, workload([0, 0], deadlines=[9, -1], n=2))
    obs = build_observations(eng)
    assert obs["decline_mask"].tolist() == [[1, 1, 1] + [0] * 8] * 2
    assert not act(eng, decline=0, agent=1)  # a decline is an action: the slot goes on
    assert eng.status[0] == DECLINED and (eng.window != 0).all()
    assert eng.num_waiting.tolist() == [1, 1]
    end_slot(eng)
    assert eng.last_misses.tolist() == [1.0, 1.0]  # both clusters saw it
    act(eng, task=1)
    while not eng.done:
        end_slot(eng)
    rec = eng.task_records()
    assert rec["declined"].tolist() == [True, False] and rec["jct"][0] == -1 and rec["met"][0] == np.False_
    assert eng.finished_count + eng.declined_count == eng.T


def test_decline_is_refused_where_the_scenario_does_not_allow_it_and_on_an_empty_place():
    eng = Engine(scenario(), strict=True)
    eng.reset(0, workload([0]))
    with pytest.raises(InvalidActionError, match="allow_decline"):
        act(eng, decline=0)
    lax = Engine(scenario(allow_decline=True))
    lax.reset(0, workload([0]))
    assert act(lax, decline=5)  # empty place: counted, nothing happens, the slot ends
    assert lax.invalid_actions.tolist() == [1] and lax.status[0] == WAITING


def test_start_and_decline_of_the_same_place_in_one_round_is_an_error():
    eng = Engine(scenario(allow_decline=True), strict=True)
    eng.reset(0, workload([0]))
    a = RoundActions.nothing(1, 2)
    a.task[0], a.alloc[0] = 0, (2, 1)
    a.decline_place(0, 0)
    assert round_problem(eng, a) is not None
    with pytest.raises(InvalidActionError):
        a.play(eng)
    assert eng.status[0] == WAITING  # a strict round is checked before anything is applied


# ----------------------------------------------------------------------------- capacity schedules
def test_tidal_share_peaks_and_troughs_where_the_formula_says():
    tide = CapacitySchedule("tidal", period_seconds=100.0, peak_load=0.9, trough_ratio=0.02, peak_seconds=50.0)
    assert available_share(tide, 50.0) == pytest.approx(0.1)
    assert available_share(tide, 0.0) == pytest.approx(1 - 0.9 * 0.02)
    assert available_share(tide, 100.0) == pytest.approx(available_share(tide, 0.0))
    steps = CapacitySchedule("csv", times=(0.0, 60.0), shares=(1.0, 0.25))
    assert [available_share(steps, t) for t in (0, 59, 60, 1e6)] == [1.0, 1.0, 0.25, 0.25]


def test_capacity_is_filled_node_by_node_within_a_cluster():
    steps = CapacitySchedule("csv", times=(0.0, 30.0, 60.0), shares=(1.0, 0.6, 0.0))
    scen = scenario(clusters=(Cluster("edge", ((4, 1), (4, 1), (4, 1), (4, 1)), capacity_schedule=steps),
                              Cluster("cloud", ((8, 4),), kind="cloud")))
    assert node_capacity_at(scen, 0).tolist() == [[4, 1]] * 4 + [[8, 4]]
    # 0.6 x 4 nodes = 2.4: two whole nodes, 40% of the third (1 CPU of 4 after flooring, no GPU)
    assert node_capacity_at(scen, 1).tolist() == [[4, 1], [4, 1], [1, 0], [0, 0], [8, 4]]
    assert node_capacity_at(scen, 2).tolist() == [[0, 0]] * 4 + [[8, 4]]


def _shrinking(on_shrink: str, **kw) -> Engine:
    steps = CapacitySchedule("csv", times=(0.0, 60.0, 150.0), shares=(1.0, 0.5, 1.0))
    scen = scenario(clusters=(Cluster("a", ((8, 4),), kind="cloud", capacity_schedule=steps),), on_shrink=on_shrink,
                    types=(RES,), **kw)
    eng = Engine(scen, strict=True)
    eng.reset(0, workload([0, 0]))
    return eng


def test_a_shrinking_node_preempts_its_latest_task_which_keeps_its_progress_and_pays_a_restart():
    eng = _shrinking("preempt", restart_seconds=15.0)
    act(eng, task=0, alloc=(1, 2))  # 16 it/s: 480 iterations a slot
    act(eng, task=1, alloc=(1, 2))
    end_slot(eng)  # slot 0
    end_slot(eng)  # slot 1; slot 2 has half the node: 2 GPUs, one task must go
    assert eng.node_capacity_now.tolist() == [[4, 2]]
    assert eng.status[:2].tolist() == [RUNNING, WAITING] and eng.preemptions[:2].tolist() == [0, 1]
    assert eng.progress[1] == pytest.approx(960 / 1200) and (eng.node_free >= 0).all()
    assert eng.window[0, 0] == 1  # back in the window, ahead of new arrivals
    end_slot(eng)  # slot 2: task 0 finishes (1200 <= 1440); capacity back at slot 5 (150 s)
    assert eng.status[0] == FINISHED
    act(eng, task=0, alloc=(1, 2))
    end_slot(eng)  # slot 3: half of it lost to the 15 s restart: 0.8 + 240/1200 = 1.0
    assert eng.status[1] == FINISHED and eng.task_records()["preemptions"].tolist() == [0, 1]


def test_shrink_rule_lowers_allocations_to_minimums_before_preempting():
    eng = _shrinking("shrink")
    act(eng, task=0, alloc=(1, 2))
    act(eng, task=1, alloc=(1, 2))
    end_slot(eng)
    end_slot(eng)  # capacity 2 GPUs: both shrink to 1 GPU, nobody is preempted
    assert eng.status[:2].tolist() == [RUNNING, RUNNING]
    assert eng.alloc[:2, 1].tolist() == [1, 1] and eng.node_free.tolist() == [[2, 0]]


def test_restart_on_the_other_kind_costs_the_migration_time():
    steps = CapacitySchedule("csv", times=(0.0, 30.0), shares=(1.0, 0.0))
    scen = scenario(clusters=(Cluster("e", ((8, 4),), capacity_schedule=steps), Cluster("c", ((8, 4),), kind="cloud")),
                    types=(RES,), restart_seconds=0.0, migration_seconds=60.0)
    eng = Engine(scen, strict=True)
    eng.reset(0, workload([0], n=2))
    act(eng, task=0, alloc=(1, 1))  # on the edge node: 10 it/s x 0.5 x 30 s = 150 iterations
    end_slot(eng)  # the edge node goes away: preempted
    assert eng.progress[0] == pytest.approx(150 / 1200) and eng.status[0] == WAITING
    act(eng, task=0, alloc=(1, 1), agent=1)  # restarts on the cloud
    end_slot(eng)
    end_slot(eng)  # two slots of migration: no progress yet
    assert eng.progress[0] == pytest.approx(150 / 1200)
    end_slot(eng)
    assert eng.progress[0] == pytest.approx(450 / 1200)


# ----------------------------------------------------------------------------- speeds
def test_throughput_tables_interpolate_and_stay_flat_beyond_the_last_count():
    _, b = throughput_tables((1, 2, 4), (10.0, 16.0, 20.0), 100.0, cpu_max=2, gpu_max=6, slot_seconds=1.0)
    assert b[0].tolist() == pytest.approx([0.0, 0.1, 0.16, 0.18, 0.2, 0.2, 0.2])
    assert (b[0] == b[2]).all()  # CPUs change nothing


def test_edge_nodes_run_a_type_at_its_edge_speed():
    scen = scenario(clusters=(Cluster("e", ((8, 4),)), Cluster("c", ((8, 4),), kind="cloud")), types=(RES,))
    st_ = static_tables(scen)
    assert st_.node_kind.tolist() == [0, 1] and st_.node_speed.tolist() == [[0.5, 1.0]]
    eng = Engine(scen, strict=True)
    eng.reset(0, workload([0, 0], n=2))
    act(eng, task=0, alloc=(1, 1))
    act(eng, task=1, alloc=(1, 1), agent=1)
    while not eng.done:
        end_slot(eng)
    rec = eng.task_records()
    assert (rec["cluster"].tolist(), rec["jct"].tolist()) == ([0, 1], [8, 4])  # 1200 / 150 and 1200 / 300


def test_observations_show_current_capacity_kinds_and_running_deadlines():
    steps = CapacitySchedule("csv", times=(0.0, 30.0), shares=(1.0, 0.5))
    scen = scenario(clusters=(Cluster("e", ((8, 4),), capacity_schedule=steps), Cluster("c", ((8, 4),), kind="cloud")))
    eng = Engine(scen)
    eng.reset(0, workload([0], deadlines=[6], n=2))
    act(eng, task=0, agent=1)
    end_slot(eng)
    obs = build_observations(eng)
    assert obs["node_capacity"][:, 0].tolist() == [[4, 2], [8, 4]]
    assert obs["node_kind"][:, 0].tolist() == [0, 1]
    assert obs["running_deadline"][1, 0] == 5 and obs["running_deadline"][0, 0] == -1
    assert observation_space(eng).contains({k: v[0] for k, v in obs.items()})


def test_defaults_leave_every_builtin_fingerprint_alone_and_tier_settings_change_it():
    scen = scenario(types=(RES,))
    assert scenario_fingerprint(scen) != scenario_fingerprint(dataclasses.replace(scen, allow_decline=True))
    assert scenario_fingerprint(scen) != scenario_fingerprint(
        dataclasses.replace(scen, task_types=(dataclasses.replace(RES, edge_speed=0.4),)))
    assert scenario_fingerprint(scen) == scenario_fingerprint(
        dataclasses.replace(scen, deadlines=Deadlines("elasticflow")))  # deadlines change tasks, like arrivals


# ----------------------------------------------------------------------------- invariants (hypothesis)
TIDE = CapacitySchedule("tidal", period_seconds=600.0, peak_load=1.0, trough_ratio=0.0, peak_seconds=300.0)


def _tier_world(on_shrink: str) -> Scenario:
    return scenario(clusters=(Cluster("cloud", ((8, 4), (4, 2)), kind="cloud"),
                              Cluster("edge", ((4, 1), (4, 1), (4, 1)), capacity_schedule=TIDE)),
                    types=(IMG, RES), arrivals=Arrivals(rate=1.5, tasks=24), visibility="random-subset",
                    allow_decline=True, on_shrink=on_shrink, restart_seconds=10.0, migration_seconds=45.0,
                    deadlines=Deadlines("elasticflow", fraction=0.7), max_slots=400)


def _check(eng: Engine) -> None:
    used = np.zeros_like(eng.node_capacity_now)
    live = eng.running[eng.running != eng.empty]
    np.add.at(used, eng.node[live], eng.alloc[live])
    assert (used <= eng.node_capacity_now).all() and (eng.node_capacity_now <= eng.static.node_capacity).all()
    assert np.array_equal(eng.node_free, eng.node_capacity_now - used)
    assert (eng.status[live] == RUNNING).all() and live.size == len(set(live.tolist()))
    assert ((eng.status[:eng.T] == RUNNING).sum()) == live.size
    waiting = set(np.flatnonzero(eng.status[:eng.T] == WAITING).tolist())
    in_windows = set(eng.window[eng.window != eng.empty].tolist())
    for c in range(eng.N):  # a task holds at most one place of a window (and none once started)
        places = eng.window[c][eng.window[c] != eng.empty]
        assert len(set(places.tolist())) == places.size
    assert in_windows <= waiting
    assert eng.num_waiting.tolist() == [int((eng.visible[:eng.T, c] & (eng.status[:eng.T] == WAITING)).sum())
                                        for c in range(eng.N)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), on_shrink=st.sampled_from(["preempt", "shrink"]),
       p_decline=st.floats(0.0, 0.3), p_realloc=st.floats(0.0, 0.3), junk=st.booleans())
def test_invariants_hold_under_random_and_adversarial_actions(seed, on_shrink, p_decline, p_realloc, junk):
    eng = Engine(_tier_world(on_shrink))
    eng.reset(seed)
    rng = np.random.default_rng(seed)
    rounds = 0
    while not eng.done:
        obs = build_observations(eng)
        a = random_feasible(obs, rng, p_pass=0.3)
        for i in range(eng.N):
            places = np.flatnonzero(obs["decline_mask"][i, 1:])
            if places.size and rng.random() < p_decline:
                a.decline_place(i, int(rng.choice(places)) if not junk else int(rng.integers(-1, eng.W + 2)))
        if rng.random() < p_realloc:  # random resizes, some of them over capacity (refused, counted)
            a.realloc = np.full((eng.N, eng.M, eng.R), -1, dtype=np.int64)
            a.realloc[rng.integers(eng.N), rng.integers(eng.M)] = rng.integers(0, 5, size=eng.R)
        if junk and rng.random() < 0.2:
            a.task[:] = rng.integers(-1, eng.W + 2, size=eng.N)
            a.alloc[:] = rng.integers(0, 9, size=a.alloc.shape)
        a.play(eng)
        rounds += 1
        if eng.round == 0 or rounds % 7 == 0:
            _check(eng)
        if rounds > 40 and eng.round > 40:  # keep examples short: end the slot
            RoundActions.nothing(eng.N, eng.R).play(eng)
    rec = eng.task_records()
    outcome = (rec["jct"] >= 0).astype(int) + rec["declined"].astype(int)
    assert (outcome == 1).all() if not eng.truncated else (outcome <= 1).all()
    assert eng.finished_count + eng.declined_count == (eng.T if not eng.truncated else int(outcome.sum()))
    assert not (rec["met"] & rec["declined"]).any() and ((rec["lateness"] >= 1) == (
        (rec["jct"] >= 0) & (rec["deadline"] >= 0) & ~rec["met"])).all()


def test_fork_of_a_tier_episode_with_the_true_future_replays_it_exactly():
    scen = _tier_world("preempt")
    a, b = Engine(scen), Engine(scen)
    a.reset(5)
    b.reset(5)
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    while a.slot < 6:
        random_feasible(build_observations(a), rng_a, p_pass=0.4).play(a)
        random_feasible(build_observations(b), rng_b, p_pass=0.4).play(b)
    wl = a.workload
    future = Workload(wl.arrival_slot[a.next_arrival:], wl.task_type[a.next_arrival:], wl.visible[a.next_arrival:],
                      wl.work[a.next_arrival:], wl.deadline[a.next_arrival:])
    f = a.fork(future)
    while not b.done:
        acts = random_feasible(build_observations(b), rng_b, p_pass=0.4)
        acts.play(b)
        dataclasses.replace(acts).play(f)
    assert f.done and np.array_equal(f.task_records()["finish"], b.task_records()["finish"])
    assert np.array_equal(f.task_records()["preemptions"], b.task_records()["preemptions"])


def test_miss_penalty_charges_each_missed_task_once_in_the_team_reward():
    from agents.learned.collect import RewardSpec
    from envs.episode import EpisodeRun

    run = EpisodeRun(scenario(), 0, workload=workload([0, 0], deadlines=[2, -1]))
    spec = RewardSpec(scale=0.5, miss_penalty=10.0)
    rewards = []
    while not run.done:
        info = run.play(RoundActions.nothing(1, 2))
        rewards.append(spec.of(info))
        if run.engine.slot == 3:
            break
    # slot ends 0, 1, 2: two tasks waiting each time; the deadline task misses at the end of slot 1
    assert rewards == [-1.0, -(2 + 10.0) * 0.5, -1.0]


def test_the_exact_optimum_refuses_settings_its_program_does_not_model():
    from tapfinger.evaluation.optimal.solve import optimal

    scen = dataclasses.replace(scenario(), allow_decline=True)
    with pytest.raises(ValueError, match="declines.*does not model"):
        optimal(scen, workload([0, 0]))


def test_teacher_labels_the_learners_masks_forbid_are_left_out():
    from agents.learned.collect import teacher_record

    eng = Engine(scenario())
    eng.reset(0, workload([0, 0]))
    obs = build_observations(eng)
    ok, too_big = RoundActions.nothing(1, 2), RoundActions.nothing(1, 2)
    ok.task[0], ok.alloc[0] = 0, (2, 1)
    too_big.task[0], too_big.alloc[0] = 0, (9, 9)  # more than the node has: the masks forbid it
    assert len(teacher_record(obs, ok, eng.scenario).decisions) == 1
    assert teacher_record(obs, too_big, eng.scenario).decisions == []
