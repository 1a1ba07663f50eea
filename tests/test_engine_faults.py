"""Faults (issue 15): failures that lose the progress since the last checkpoint, repairs, slowdowns,
departures and joins, from the seed alone or replayed from a file; hand-computed cases, the TOML
format, and invariants under random fault schedules and random / adversarial actions (hypothesis)."""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.registry import make_policy
from envs.actions import RoundActions, random_feasible
from envs.episode import run_episode
from envs.observations import build_observations
from tapfinger.sim.engine import FINISHED, RUNNING, WAITING, Engine
from tapfinger.sim.faults import FaultTimeline
from tapfinger.sim.scenario import (Arrivals, Cluster, Faults, ProgressSpec, Scenario, ScenarioError, TaskType,
                                    builtin_text, parse_scenario, scenario_fingerprint)
from tapfinger.sim.workload import Workload

# 10 iterations/s at 1 GPU, 3000 iterations, 30-second slots: 10% of the task per slot on the cloud
TEN = TaskType("TEN", (1, 1), ProgressSpec("throughput", gpus=(1,), iterations_per_second=(10.0,), iterations=3000.0))


def scenario(faults: Faults, clusters=None, **kw) -> Scenario:
    return Scenario(name="faulty", resources=("cpu", "gpu"), clusters=clusters or (Cluster("c", ((4, 2),), kind="cloud"),),
                    task_types=(TEN,), arrivals=Arrivals(rate=1.0, tasks=2), grid_max=(4, 2), visibility="all",
                    slot_seconds=30.0, max_slots=300, faults=faults, **kw)


def one_task(n: int = 1) -> Workload:
    return Workload(np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), np.ones((1, n), dtype=bool),
                    np.ones(1), np.full(1, -1, dtype=np.int64))


def start(eng: Engine, agent: int = 0) -> None:
    a = RoundActions.nothing(eng.N, eng.R)
    a.task[agent], a.alloc[agent] = 0, (1, 1)
    assert not a.play(eng)


def end_slot(eng: Engine) -> None:
    assert RoundActions.nothing(eng.N, eng.R).play(eng)


def test_a_failure_at_60_percent_falls_back_to_the_checkpoint_at_50_and_finishes_when_the_rule_says():
    # checkpoints every 150 s of running = 5 slots: at 50%; the node fails at 170 s (during slot 5, at
    # 60%) and is repaired at 200 s (during slot 6): it is back for slot 7
    faults = Faults(events=((170.0, 0, "fail", 0.0), (200.0, 0, "repair", 0.0)), checkpoint_seconds=150.0)
    eng = Engine(scenario(faults), strict=True)
    eng.reset(0, one_task())
    start(eng)
    for _ in range(5):
        end_slot(eng)
    assert eng.progress[0] == pytest.approx(0.5) and eng.checkpoint[0] == pytest.approx(0.5)
    end_slot(eng)  # slot 5 ends at 60%, then the failure of its slot applies
    assert eng.status[0] == WAITING and eng.progress[0] == pytest.approx(0.5)
    assert eng.lost_work[0] == pytest.approx(0.1) and eng.node_capacity_now.tolist() == [[0, 0]]
    assert build_observations(eng)["node_health"][0, 0] == 0
    end_slot(eng)  # slot 6: down; repaired during it
    assert eng.node_capacity_now.tolist() == [[4, 2]] and build_observations(eng)["node_health"][0, 0] == 1
    start(eng)  # slot 7: five more slots, 7..11
    while not eng.done:
        end_slot(eng)
    rec = eng.task_records()
    assert rec["finish"][0] == 11 and rec["jct"][0] == 12
    assert (rec["failures"][0], rec["preemptions"][0], rec["recovery_slots"][0]) == (1, 1, 2)
    assert rec["lost_work"][0] == pytest.approx(0.1)


def test_without_checkpoints_a_failure_loses_everything_and_checkpoints_cost_their_share():
    eng = Engine(scenario(Faults(events=((100.0, 0, "fail", 0.0),))), strict=True)
    eng.reset(0, one_task())
    start(eng)
    for _ in range(4):
        end_slot(eng)
    assert eng.progress[0] == 0.0 and eng.lost_work[0] == pytest.approx(0.4)
    costly = Engine(scenario(Faults(events=((1e9, 0, "fail", 0.0),), checkpoint_seconds=60.0,
                                    checkpoint_cost_seconds=15.0)), strict=True)
    costly.reset(0, one_task())
    start(costly)
    end_slot(costly)
    assert costly.progress[0] == pytest.approx(0.1) and costly.checkpoint[0] == 0.0  # no checkpoint yet: no cost
    end_slot(costly)  # 60 s of running: a checkpoint, taking half of this slot
    assert costly.progress[0] == pytest.approx(0.15) and costly.checkpoint[0] == pytest.approx(0.15)


def test_slowdowns_slow_and_departures_keep_progress():
    events = ((10.0, 0, "slow", 0.5), (40.0, 0, "recover", 0.0), (70.0, 0, "leave", 0.0), (100.0, 0, "join", 0.0))
    eng = Engine(scenario(Faults(events=events)), strict=True)
    eng.reset(0, one_task())
    start(eng)
    end_slot(eng)  # the slowdown comes during slot 0: seen from slot 1 on
    assert eng.progress[0] == pytest.approx(0.1) and build_observations(eng)["node_speed"][0, 0] == 0.5
    end_slot(eng)
    assert eng.progress[0] == pytest.approx(0.15)
    end_slot(eng)  # recovered during slot 1; the node leaves during slot 2: announced, progress kept
    assert eng.progress[0] == pytest.approx(0.25) and eng.status[0] == WAITING and eng.lost_work[0] == 0.0
    end_slot(eng)  # back during slot 3
    start(eng)
    assert eng.status[0] == RUNNING


def test_faults_come_from_the_seed_alone_and_are_the_same_for_every_policy():
    text = builtin_text("edge-default") + "\n[faults]\nmtbf_seconds = 100\nrepair_seconds = 30\n" \
        "slowdown_mtbf_seconds = 150\nslowdown_seconds = 50\n"
    sc = parse_scenario(tomllib.loads(text), "t")
    sc = dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=60))
    logs = {}
    for name in ("greedy", "random"):
        eng = Engine(sc)
        run_episode(sc, make_policy(name, sc), 4, engine=eng)
        logs[name] = eng.fault_log
    short = min(len(v) for v in logs.values())
    assert short > 5 and logs["greedy"][:short] == logs["random"][:short]
    a = FaultTimeline(sc, 4, 9, np.zeros(9, dtype=np.int64)).events_until(5000.0)
    b = FaultTimeline(sc, 4, 9, np.zeros(9, dtype=np.int64)).events_until(5000.0)
    c = FaultTimeline(sc, 5, 9, np.zeros(9, dtype=np.int64)).events_until(5000.0)
    assert a == b != c and all(x[0] <= y[0] for x, y in zip(a, a[1:]))
    assert scenario_fingerprint(sc) == scenario_fingerprint(parse_scenario(tomllib.loads(builtin_text("edge-default")), "t"))


def test_a_planners_fork_meets_no_future_fault():
    eng = Engine(scenario(Faults(events=((100.0, 0, "fail", 0.0),))))
    eng.reset(0, one_task())
    start(eng)
    fork = eng.fork()
    while not fork.done:
        end_slot(fork)
    assert fork.task_records()["failures"][0] == 0 and eng.fault_timeline is not None


# ----------------------------------------------------------------------------- the TOML format
BASE = builtin_text("edge-default")


def load(extra: str, tmp_path=None) -> Scenario:
    return parse_scenario(tomllib.loads(BASE + "\n[faults]\n" + extra), "t.toml", base_dir=tmp_path)


@pytest.mark.parametrize("extra, key", [
    ("clusters = ['nowhere']\nmtbf_seconds = 10\nrepair_seconds = 5", "faults.clusters"),
    ("mtbf_seconds = 10", "faults.repair_seconds"),
    ("slowdown_seconds = 10", "faults.slowdown_mtbf_seconds"),
    ("slowdown_factor = 0", "faults.slowdown_factor"),
    ("checkpoint_seconds = -1", "faults.checkpoint_seconds"),
    ("mtbf = 5", "faults"),
])
def test_bad_fault_keys_are_named(extra, key):
    with pytest.raises(ScenarioError, match=key.replace(".", r"\.")):
        load(extra)


@pytest.mark.parametrize("rows, problem", [
    ("time,cluster,node,event,value\n", "header"),
    ("time_seconds,cluster,node,event,value\n10,mars,0,fail,\n", "column 'cluster'"),
    ("time_seconds,cluster,node,event,value\n10,factory,7,fail,\n", "column 'node'"),
    ("time_seconds,cluster,node,event,value\n10,factory,0,explode,\n", "column 'event'"),
    ("time_seconds,cluster,node,event,value\n10,factory,0,slow,2\n", "column 'value'"),
    ("time_seconds,cluster,node,event,value\n10,factory,0,fail,\n5,factory,0,repair,\n", "column 'time_seconds'"),
])
def test_bad_event_files_name_line_and_column(tmp_path, rows, problem):
    (tmp_path / "f.csv").write_text(rows)
    with pytest.raises(ScenarioError, match=problem):
        load('events = "f.csv"', tmp_path)


def test_event_file_rows_become_global_nodes(tmp_path):
    (tmp_path / "f.csv").write_text("\ufefftime_seconds,cluster,node,event,value\n# a comment\n10,campus,1,fail,\n"
                                    "20,campus,1,repair,\n30,metro,0,slow,0.25\n")
    sc = load('events = "f.csv"\ncheckpoint_seconds = 60', tmp_path)
    assert sc.faults.events == ((10.0, 3, "fail", 0.0), (20.0, 3, "repair", 0.0), (30.0, 7, "slow", 0.25))
    assert sc.faults.active and sc.faults.checkpoint_seconds == 60.0


# ----------------------------------------------------------------------------- invariants
def _check(eng: Engine) -> None:
    used = np.zeros_like(eng.node_capacity_now)
    live = eng.running[eng.running != eng.empty]
    np.add.at(used, eng.node[live], eng.alloc[live])
    assert (used <= eng.node_capacity_now).all() and np.array_equal(eng.node_free, eng.node_capacity_now - used)
    assert not live.size or eng.node_state.up[eng.node[live]].all()  # nothing runs on a node that is down
    assert (eng.node_capacity_now[~eng.node_state.up] == 0).all()
    assert (eng.progress >= 0).all() and (eng.checkpoint <= eng.progress + 1e-12).all()
    assert (eng.lost_work >= 0).all()
    for c in range(eng.N):  # a task holds at most one place of a window (and none once started)
        places = eng.window[c][eng.window[c] != eng.empty]
        assert len(set(places.tolist())) == places.size


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), mtbf=st.floats(60.0, 2000.0), repair=st.floats(10.0, 600.0),
       ckpt=st.sampled_from([0.0, 20.0, 60.0]), p_realloc=st.floats(0.0, 0.3))
def test_invariants_under_random_faults_and_actions(seed, mtbf, repair, ckpt, p_realloc):
    clusters = (Cluster("a", ((8, 4), (4, 2))), Cluster("b", ((4, 2),) * 3))
    faults = Faults(mtbf_seconds=mtbf, repair_seconds=repair, slowdown_mtbf_seconds=300.0, slowdown_seconds=100.0,
                    leave_mtbf_seconds=900.0, absence_seconds=200.0, checkpoint_seconds=ckpt, checkpoint_cost_seconds=2.0)
    sc = dataclasses.replace(scenario(faults, clusters, restart_seconds=10.0), visibility="random-subset",
                             arrivals=Arrivals(rate=1.5, tasks=30), max_slots=2000)
    eng = Engine(sc)
    eng.reset(seed)
    rng = np.random.default_rng(seed)
    while not eng.done:
        a = random_feasible(build_observations(eng), rng, p_pass=0.3)
        if rng.random() < p_realloc:
            a.realloc = np.full((eng.N, eng.M, eng.R), -1, dtype=np.int64)
            a.realloc[rng.integers(eng.N), rng.integers(eng.M)] = rng.integers(0, 5, size=eng.R)
        restarting = [int(eng.window[i, p]) for i, p in enumerate(a.task) if p >= 0 and eng.window[i, p] != eng.empty]
        a.play(eng)
        for t in restarting:  # restart costs paid: a task started again carries its restart overhead
            if eng.status[t] == RUNNING and eng.preemptions[t] and eng.start[t] < eng.slot:
                assert eng.overhead[t] == pytest.approx(sc.restart_seconds) or eng.slot > eng.start[t]
        _check(eng)
    rec = eng.task_records()
    assert eng.truncated or ((rec["jct"] >= 0).all() and (eng.status[:eng.T] == FINISHED).all())


def test_a_task_a_fault_stopped_pays_the_fault_restart_and_only_the_leaving_clusters_leave():
    faults = Faults(events=((20.0, 0, "fail", 0.0), (40.0, 0, "repair", 0.0)), restart_seconds=15.0,
                    checkpoint_seconds=30.0)
    eng = Engine(scenario(faults), strict=True)
    eng.reset(0, one_task())
    start(eng)
    end_slot(eng)  # 10%, checkpointed; the failure during slot 0 takes nothing more
    end_slot(eng)  # repaired during slot 1
    start(eng)
    end_slot(eng)  # half the slot spent restarting: 10% + 5%
    assert eng.progress[0] == pytest.approx(0.15) and eng.task_records()["recovery_slots"][0] == 2
    sc = scenario(Faults(leave_mtbf_seconds=10.0, absence_seconds=10.0, leave_clusters=("b",)),
                  clusters=(Cluster("a", ((4, 2),)), Cluster("b", ((4, 2),) * 2)))
    events = FaultTimeline(sc, 0, 3, np.array([0, 1, 1])).events_until(1000.0)
    assert events and {node for _, node, _, _ in events} == {1, 2}
    assert {event for _, _, event, _ in events} == {"leave", "join"}


def test_edge_faulty_is_edge_default_with_faults():
    from tapfinger.sim.scenario import load_scenario

    faulty, base = load_scenario("edge-faulty"), load_scenario("edge-default")
    assert scenario_fingerprint(faulty) == scenario_fingerprint(base)  # the edge-default policy runs on it
    assert dataclasses.replace(faulty, faults=Faults(), name=base.name, description=base.description) == base
    assert faulty.faults.active and faulty.faults.leave_clusters == ("retail",)
