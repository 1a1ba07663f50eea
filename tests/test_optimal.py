"""The lower bound and the exact optimum (tapfinger/evaluation/bounds.py, tapfinger/evaluation/optimal.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.registry import make_policy, policy_names
from tapfinger.evaluation.bounds import lower_bound
from tapfinger.sim.progress import NEVER
from tapfinger.sim.speed import slot_table
from tapfinger.sim.tables import static_tables
from tapfinger.sim.engine import Engine
from tapfinger.evaluation.optimal import (MAX_TASKS, InstanceTooLargeError, WindowOverflowError, check_schedule, optimal,
                               replay_schedule, small_scenario)
from envs.episode import run_episode
from tapfinger.sim.scenario import Cluster, load_scenario
from tapfinger.sim.workload import make_workload
from tests.helpers import scenario_params, workload


def one_node_scenarios(*nodes: tuple[int, int], grid: tuple[int, int] = (16, 16)):
    """synthetic-3 with one single-node cluster per (cpu, gpu) given."""
    base = load_scenario("synthetic-3")
    clusters = tuple(Cluster(f"c{i}", (n,)) for i, n in enumerate(nodes))
    return dataclasses.replace(base, clusters=clusters, grid_max=grid)


# ----------------------------------------------------------------------------- hand-made optima


def test_img_tasks_on_one_gpu_run_one_after_another():
    # One GPU: three 4-slot IMG tasks run in turn. The first must be one of the two that arrive
    # at slot 0; then JCTs 4, 8 - a2, 12 - a3 with a2 + a3 = 0 + 1: total 23.
    sc = one_node_scenarios((4, 1), grid=(4, 1))
    wl = workload(sc, [(0, "IMG", [0]), (0, "IMG", [0]), (1, "IMG", [0])])
    opt = optimal(sc, wl)
    assert opt.avg_jct == pytest.approx(23 / 3)
    assert sorted(opt.start.tolist()) == [0, 4, 8]
    check_schedule(sc, wl, opt)
    assert replay_schedule(sc, wl, opt)["jct"].tolist() == opt.jct.tolist()
    assert lower_bound(sc, wl)[0].tolist() == [4, 4, 4]


def test_two_lm_tasks_share_sixteen_gpus():
    # LM: 2 slots with >= 10 GPUs, 3 with 7..9, 4 with 5..6. A total of 5 (2 + 3) would need
    # 10 + 7 > 16 GPUs at once, or a start at slot 2 (JCT >= 4): the best total is 6.
    sc = one_node_scenarios((16, 16))
    wl = workload(sc, [(0, "LM", [0]), (0, "LM", [0])])
    opt = optimal(sc, wl)
    assert opt.avg_jct == 3.0
    assert lower_bound(sc, wl)[1] == 2.0
    check_schedule(sc, wl, opt)


def test_visibility_decides_whether_tasks_can_run_side_by_side():
    sc = one_node_scenarios((4, 1), (4, 1), grid=(4, 1))
    apart = workload(sc, [(0, "IMG", [0]), (0, "IMG", [0, 1])])
    assert optimal(sc, apart).avg_jct == 4.0  # the second goes to cluster 1
    same = workload(sc, [(0, "IMG", [0]), (0, "IMG", [0])])
    assert optimal(sc, same).avg_jct == 6.0  # both only on cluster 0: 4 and 8


def test_lm_picks_the_bigger_cluster_and_waits_when_worth_it():
    # Cluster 1 (16 GPUs) runs an LM task in 2 slots, cluster 0 (4 GPUs) in 5. Two LM tasks at
    # slot 0, both visible to both: both on cluster 1 at 8 GPUs (3 slots each) total 6, while
    # using cluster 0 costs 5 for that task alone.
    sc = one_node_scenarios((4, 4), (16, 16))
    wl = workload(sc, [(0, "LM", [0, 1]), (0, "LM", [0, 1])])
    assert optimal(sc, wl).avg_jct == 3.0
    assert lower_bound(sc, wl)[0].tolist() == [2, 2]
    # The second sees only cluster 0, where it needs 5 slots: total 2 + 5.
    wl2 = workload(sc, [(0, "LM", [1]), (0, "LM", [0])])
    assert optimal(sc, wl2).avg_jct == 3.5


def test_optimum_equals_bound_when_tasks_never_meet():
    sc = one_node_scenarios((4, 1), grid=(4, 1))
    wl = workload(sc, [(0, "IMG", [0]), (4, "IMG", [0]), (8, "IMG", [0])])
    opt = optimal(sc, wl)
    assert opt.avg_jct == lower_bound(sc, wl)[1] == 4.0
    check_schedule(sc, wl, opt)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("name", scenario_params(["synthetic-3", "trace-3"]))
def test_slot_table_matches_the_engine_for_every_allocation(name):
    # One huge node, one task per (cpu, gpu) allocation, all started in slot 0: every JCT the
    # engine reports must be the table's slot count (same float accumulation and finish rule).
    sc = load_scenario(name)
    st = static_tables(sc)
    grid = st.grid_max
    big = tuple(int(10_000) for _ in sc.resources)
    allocs = []
    for k, _ in enumerate(sc.task_types):
        lo = st.type_min[k]
        for c in range(lo[st.cpu], grid[st.cpu] + 1):
            for g in range(lo[st.gpu], grid[st.gpu] + 1):
                allocs.append((k, c, g))
    sc = dataclasses.replace(sc, clusters=(Cluster("big", (big,)),), window_size=len(allocs),
                             allow_preemption=False)
    type_names = [t.name for t in sc.task_types]
    wl = workload(sc, [(0, type_names[k], [0]) for k, _, _ in allocs])
    eng = Engine(sc, strict=True)
    eng.reset(0, workload=wl)
    for place, (k, c, g) in enumerate(allocs):
        a = np.array(st.type_min[k])
        a[st.cpu], a[st.gpu] = c, g
        eng.play_round(np.array([place]), np.array([0]), a[None, :])
    while not eng.done:
        eng.play_round(np.array([-1]), np.array([0]), np.zeros((1, eng.R), dtype=np.int64))
    table = slot_table(sc)
    expect = [table[k, c, g] for k, c, g in allocs]
    assert eng.task_records()["jct"].tolist() == expect


def test_a_window_overflow_makes_the_optimum_unreachable_but_still_a_bound():
    # Window of 1: the env can start only one of the three tasks in slot 0, the model all three.
    sc = dataclasses.replace(one_node_scenarios((8, 3), grid=(8, 3)), window_size=1)
    wl = workload(sc, [(0, "IMG", [0]), (0, "IMG", [0]), (0, "IMG", [0])])
    opt = optimal(sc, wl)
    assert opt.avg_jct == 4.0
    with pytest.raises(WindowOverflowError, match="not in cluster 0's window"):
        replay_schedule(sc, wl, opt)


def test_unreachable_task_gets_an_infinite_bound():
    sc = one_node_scenarios((1, 1), (4, 4))  # cluster 0 cannot hold the (2, 1) minimum
    wl = workload(sc, [(0, "IMG", [0]), (0, "IMG", [1])])
    per_task, mean = lower_bound(sc, wl)
    assert per_task[0] == NEVER and per_task[1] == 4 and mean == float("inf")


# ----------------------------------------------------------------------------- random instances


def _heuristic_policies(scenario):
    # Learned policies need a checkpoint and torch (slow to import): heuristics only here;
    # scripts/optimality_gap.py runs every policy that can be built.
    from tapfinger.evaluation.harness import is_heuristic

    return [(name, make_policy(name, scenario, seed=0)) for name in policy_names() if is_heuristic(name)]


@pytest.mark.parametrize("seed", range(6))
def test_no_policy_beats_the_optimum_or_the_bound(seed):
    sc = small_scenario(2 + seed % 2, seed=seed, tasks=8)
    wl = make_workload(sc, seed)
    opt = optimal(sc, wl)
    check_schedule(sc, wl, opt)
    _, bound = lower_bound(sc, wl)
    assert opt.avg_jct >= bound - 1e-9
    # The schedule is playable in the engine and gives the same JCTs (no window overflow here:
    # 8 tasks, windows of 10).
    assert replay_schedule(sc, wl, opt)["jct"].tolist() == opt.jct.tolist()
    policies = _heuristic_policies(sc)
    names = {n for n, _ in policies}
    assert {"random", "min"} <= names
    for name, policy in policies:
        res = run_episode(sc, policy, seed)
        assert not res.truncated
        assert res.avg_jct >= bound - 1e-9, f"{name} beat the lower bound"
        if not policy.preemptive:
            assert res.avg_jct >= opt.avg_jct - 1e-9, f"non-preemptive {name} beat the optimum"


def test_reduced_cost_fixing_keeps_the_optimum():
    for seed in (1, 6):
        sc = small_scenario(3, seed=seed, tasks=8)
        wl = make_workload(sc, seed)
        assert optimal(sc, wl).avg_jct == optimal(sc, wl, lp_fixing=False).avg_jct


# ----------------------------------------------------------------------------- limits


def test_too_many_tasks_is_a_clear_error():
    sc = small_scenario(2, seed=0, tasks=MAX_TASKS + 1)
    with pytest.raises(InstanceTooLargeError, match=rf"{MAX_TASKS + 1} tasks.*limited to {MAX_TASKS} tasks") as info:
        optimal(sc, make_workload(sc, 0))
    assert isinstance(info.value, ValueError)


def test_too_many_binaries_is_a_clear_error():
    sc = small_scenario(2, seed=0, tasks=12)
    with pytest.raises(InstanceTooLargeError, match=r"more than 50 binary variables.*limits are"):
        optimal(sc, make_workload(sc, 0), max_binaries=50)
