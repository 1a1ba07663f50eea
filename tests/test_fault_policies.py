"""Every heuristic keeps working on unreliable nodes (issue 15): whole episodes of a shortened
edge-faulty under the strict engine, and greedy re-planning around a failed node."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.registry import make_policy, policy_class, policy_names
from envs.episode import run_episode
from envs.observations import build_observations
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import Faults, load_scenario

HEURISTICS = [n for n in policy_names() if not policy_class(n).learned and n != "rollout"]


def faulty(tasks: int = 40, **faults):
    sc = load_scenario("edge-faulty")
    if faults:
        sc = dataclasses.replace(sc, faults=dataclasses.replace(sc.faults, **faults))
    return dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=tasks))


@pytest.mark.parametrize("name", HEURISTICS)
def test_every_heuristic_finishes_a_faulty_episode_without_an_invalid_action(name):
    sc = faulty(mtbf_seconds=120.0, repair_seconds=30.0)  # many failures in a short episode
    eng = Engine(sc, strict=True)  # an action the masks forbid would raise
    res = run_episode(sc, make_policy(name, sc), 7, engine=eng)
    assert not res.truncated and res.unfinished == 0 and (res.records["jct"] >= 1).all()
    assert any(event == "fail" for _, _, event in eng.fault_log)
    assert res.records["failures"].sum() > 0  # a failure hit some running task


def test_rollout_plans_around_faults_without_clairvoyance():
    sc = faulty(tasks=12, mtbf_seconds=60.0, repair_seconds=30.0)
    eng = Engine(sc, strict=True)
    res = run_episode(sc, make_policy("rollout", sc, futures=1, horizon=3), 2, engine=eng)
    assert res.unfinished == 0


def test_greedy_replans_when_a_node_fails():
    sc = dataclasses.replace(faulty(tasks=30), faults=Faults(events=((12.0, 0, "fail", 0.0), (80.0, 0, "repair", 0.0))))
    eng = Engine(sc, strict=True)
    eng.reset(1)
    greedy = make_policy("greedy", sc)
    greedy.reset(1)
    down_slots = []
    while not eng.done:
        obs = build_observations(eng)
        acts = greedy.act(obs)
        if not eng.node_state.up[0]:
            down_slots.append(eng.slot)
            # node 0 is factory's first node (cluster 0, local 0), running a task when it fails:
            # greedy starts nothing there while it is down
            assert not ((acts.task[0] >= 0) and acts.node[0] == 0)
        acts.play(eng)
    rec = eng.task_records()
    assert down_slots and rec["failures"].sum() >= 1 and (rec["jct"] >= 1).all()
    hit = np.flatnonzero(rec["failures"] > 0)
    assert (rec["recovery_slots"][hit] >= 1).all()  # each restarted after its failure
