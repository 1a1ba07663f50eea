"""The deadline-aware baselines (agents/heuristics/deadline_aware.py): hand-checked decisions on
tiny scenarios, and valid actions over whole episodes on the built-in scenarios."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.registry import make_policy
from envs.episode import EpisodeRun, run_episode
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import Arrivals, Cluster, ProgressSpec, Scenario, TaskType, load_scenario
from tapfinger.sim.workload import Workload

DEADLINE_POLICIES = ["edf", "elasticflow", "elasticflow-edge", "edgeflow"]
GPU = 1  # resource index of gpu in the tiny scenarios


def tiny(edge_gpus: int = 0, cloud_gpus: int = 2, allow_decline: bool = True, edge_speed: float = 0.5,
         request_gpus: int = 2) -> Scenario:
    """A cloud node of `cloud_gpus` GPUs (+ an edge cluster of one node of `edge_gpus` GPUs) and one
    task type that scales linearly: 10 slots at 1 GPU, 5 at 2, 3 at 4 (2.5 rounded up)."""
    clusters = [Cluster("cloud", ((8, cloud_gpus),), kind="cloud")]
    if edge_gpus:
        clusters.append(Cluster("edge", ((8, edge_gpus),), kind="edge"))
    job = TaskType("job", (1, 1), ProgressSpec("throughput", gpus=(1, 2, 4), iterations_per_second=(1.0, 2.0, 4.0),
                                                iterations=10.0), edge_speed=edge_speed, request=(1, request_gpus))
    return Scenario(name="tiny", resources=("cpu", "gpu"), clusters=tuple(clusters), task_types=(job,),
                    arrivals=Arrivals(tasks=3), grid_max=(8, 4), visibility="all", window_size=4, slot_seconds=1.0,
                    allow_decline=allow_decline, max_slots=400)


def workload(scenario: Scenario, deadlines: list[int], arrivals: list[int] | None = None) -> Workload:
    T = len(deadlines)
    return Workload(arrival_slot=np.asarray(arrivals or [0] * T, dtype=np.int64),
                    task_type=np.zeros(T, dtype=np.int64), visible=np.ones((T, scenario.num_clusters), dtype=bool),
                    work=np.ones(T), deadline=np.asarray(deadlines, dtype=np.int64))


def first_round(name: str, scenario: Scenario, deadlines: list[int]):
    """The policy's actions in the first round of an episode of hand-made tasks (all at slot 0)."""
    run = EpisodeRun(scenario, 0, engine=Engine(scenario, strict=True), workload=workload(scenario, deadlines))
    policy = make_policy(name, scenario)
    policy.reset(0)
    return policy, policy.act(run.observe())


def play(name: str, scenario: Scenario, deadlines: list[int], arrivals: list[int] | None = None):
    engine = Engine(scenario, strict=True)
    result = run_episode(scenario, make_policy(name, scenario), 0, engine=engine,
                         workload=workload(scenario, deadlines, arrivals))
    return result.records


# ----------------------------------------------------------------------------- edf
def test_edf_starts_the_earliest_deadline_at_its_request_on_the_cloud_only():
    scen = tiny(edge_gpus=1)
    _, act = first_round("edf", scen, [50, 20, -1])
    assert act.task[0] == 1  # place 1 holds task 1, deadline 20
    assert act.alloc[0, GPU] == 2  # its request
    assert act.task[1] == -1  # the edge cluster is not used: the scenario has a cloud
    rec = play("edf", scen, [50, 20, -1])
    assert list(np.argsort(rec["start"], kind="stable")) == [1, 0, 2]  # deadline order, best-effort last
    assert (rec["cluster"] == 0).all() and not rec["declined"].any()


def test_edf_caps_the_request_by_what_fits():
    scen = tiny(cloud_gpus=1, request_gpus=4)
    _, act = first_round("edf", scen, [30])
    assert act.task[0] == 0 and act.alloc[0, GPU] == 1


def test_edf_uses_every_cluster_without_a_cloud():
    scen = tiny()
    scen = scen.with_overrides(clusters=(dataclasses.replace(scen.clusters[0], kind="edge"),))
    _, act = first_round("edf", scen, [30])
    assert act.task[0] == 0


# ----------------------------------------------------------------------------- elasticflow
def test_elasticflow_declines_what_it_cannot_admit_and_admits_what_it_can():
    # task 0: deadline 6 needs both GPUs for 5 slots; task 1 (deadline 8) could only start at slot 5
    # and needs 5 more slots at 2 GPUs: declined; task 2 (deadline 30) fits after task 0: admitted
    scen = tiny()
    policy, act = first_round("elasticflow", scen, [6, 8, 30])
    assert policy.admitted == {0, 2} and policy.to_decline == {1}
    assert act.task[0] == 0 and act.alloc[0, GPU] == 2
    assert act.decline is not None and act.decline[0] == 1
    rec = play("elasticflow", scen, [6, 8, 30])
    assert rec["declined"].tolist() == [False, True, False]
    assert rec["met"].tolist() == [True, False, True]


def test_elasticflow_keeps_a_refused_task_as_best_effort_without_decline():
    scen = tiny(allow_decline=False)
    policy, act = first_round("elasticflow", scen, [6, 8, 30])
    assert policy.admitted == {0, 2} and not policy.to_decline and act.decline is None
    rec = play("elasticflow", scen, [6, 8, 30])
    assert not rec["declined"].any() and (rec["finish"] >= 0).all()  # it still runs, after the admitted ones
    assert rec["met"].tolist() == [True, False, True]


def test_elasticflow_gives_spare_gpus_and_shrinks_for_a_new_admission():
    # alone, task 0 (deadline 40: 1 GPU suffices) gets all 4 GPUs by marginal gain; when task 1
    # arrives with a deadline that needs 2 GPUs, task 0 is cut back so that both meet theirs
    scen = tiny(cloud_gpus=4)
    rec = play("elasticflow", scen, [40, 9], arrivals=[0, 1])
    assert rec["alloc"][0, GPU] == 4
    assert rec["met"].all() and rec["switches"][0] >= 1


def test_elasticflow_is_cloud_only():
    scen = tiny(edge_gpus=1)
    rec = play("elasticflow", scen, [60, 60, 60])
    assert (rec["cluster"] == 0).all()


# ----------------------------------------------------------------------------- edge
def test_edgeflow_offloads_a_job_whose_deadline_holds_at_edge_speed():
    # at edge speed 0.5 one edge GPU needs 20 slots: task 0 (deadline 40) goes to the edge, task 1
    # (deadline 6) needs the cloud's 2 GPUs
    scen = tiny(edge_gpus=1)
    _, act = first_round("edgeflow", scen, [40, 6])
    assert act.task[0] == 1 and act.alloc[0, GPU] == 2  # cloud: the tight one
    assert act.task[1] == 0 and act.alloc[1, GPU] == 1  # edge: the loose one
    rec = play("edgeflow", scen, [40, 6])
    assert rec["cluster"].tolist() == [1, 0] and rec["met"].all()


def test_elasticflow_edge_uses_the_edge_only_as_overflow():
    # the same tasks: the cloud can serve task 0 after task 1 in time, so it waits for the cloud
    scen = tiny(edge_gpus=1)
    _, act = first_round("elasticflow-edge", scen, [40, 6])
    assert act.task[0] == 1 and act.task[1] == -1
    # three tight tasks at edge speed 0.8 (13 slots on the edge): after tasks 0 and 1 (slots 0-9) the
    # cloud cannot finish task 2 by slot 14, the edge can: it starts there at once
    scen = tiny(edge_gpus=1, edge_speed=0.8)
    _, act = first_round("elasticflow-edge", scen, [6, 12, 14])
    assert act.task[0] == 0 and act.task[1] == 2
    rec = play("elasticflow-edge", scen, [6, 12, 14])
    assert rec["cluster"].tolist() == [0, 0, 1] and rec["met"].all()
    # elasticflow alone declines it
    assert play("elasticflow", scen, [6, 12, 14])["declined"].tolist() == [False, False, True]


# ----------------------------------------------------------------------------- whole episodes
def _short(name: str, tasks: int) -> Scenario:
    scen = load_scenario(name)
    return scen.with_overrides(arrivals=dataclasses.replace(scen.arrivals, tasks=tasks))


@pytest.mark.parametrize("policy", DEADLINE_POLICIES)
@pytest.mark.parametrize("scenario,tasks,seeds", [("cloud-edge", 40, (0, 1)), ("hetero-6", 60, (0,))])
def test_valid_whole_episodes(policy, scenario, tasks, seeds):
    scen = _short(scenario, tasks)
    for seed in seeds:
        engine = Engine(scen, strict=True)  # any invalid action raises
        res = run_episode(scen, make_policy(policy, scen, seed=seed), seed, engine=engine)
        rec = res.records
        assert not res.truncated and res.invalid_actions == 0
        assert ((rec["finish"] >= 0) ^ rec["declined"]).all()  # each task finished or declined, once
        if policy == "edf" or not scen.allow_decline:
            assert not rec["declined"].any()
        if policy in ("edf", "elasticflow") and scenario == "cloud-edge":
            assert (engine.static.cluster_kind[rec["cluster"][rec["finish"] >= 0]] == 1).all()


def test_elasticflow_meets_more_deadlines_than_edf_on_cloud_edge():
    scen = _short("cloud-edge", 60)
    met = {p: sum(int(run_episode(scen, make_policy(p, scen), s).records["met"].sum()) for s in (0, 1))
           for p in ("edf", "elasticflow")}
    assert met["elasticflow"] > met["edf"]


def test_default_comparison_adds_the_deadline_baselines_on_deadline_scenarios_only():
    from agents.registry import DEADLINE_HEURISTICS, demo_policies

    assert set(DEADLINE_HEURISTICS) <= set(demo_policies("cloud-edge"))
    assert not set(DEADLINE_HEURISTICS) & set(demo_policies("hetero-6"))
