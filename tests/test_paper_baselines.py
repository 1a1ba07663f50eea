"""The paper's preemptive baselines (`optimus`, `tiresias`) and their `-np` variants.

Fast checks only; the fidelity against the reference numbers is `scripts/fidelity.py`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agents.heuristics.optimus import OptimusPolicy, fit_speed_model, progress_at_start, speed_model
from agents.heuristics.tiresias import TiresiasPolicy
from agents.registry import make_policy
from envs.observations import build_observations
from tapfinger.sim.engine import Engine
from tapfinger.sim.tables import static_tables
from envs.episode import run_episode
from tapfinger.sim.scenario import Scenario, load_scenario, parse_scenario
from tapfinger.sim.workload import Workload
from tests.helpers import ServiceCheck, scenario_params

PAPER = ["optimus", "tiresias", "optimus-np", "tiresias-np"]


def small(name: str, tasks: int) -> Scenario:
    """A built-in scenario cut to its first `tasks` arrivals, so a full episode is quick."""
    scen = load_scenario(name)
    return scen.with_overrides(arrivals=replace(scen.arrivals, tasks=tasks))


@pytest.mark.parametrize("policy", PAPER)
@pytest.mark.parametrize("scenario", scenario_params(["synthetic-3", "hetero-6", "trace-3", "edge-default"]))
def test_full_episode_respects_masks(policy: str, scenario: str) -> None:
    """Strict mode raises on any start or re-allocation the masks forbid; the episode must end
    with every task finished. trace-3 uses the measured profile; edge-default has several
    nodes per cluster and a mem resource."""
    scen = small(scenario, 40)
    pol = make_policy(policy, scen)
    res = run_episode(scen, pol, seed=3, engine=Engine(scen, strict=True))
    assert not res.truncated
    assert res.invalid_actions == 0
    assert (res.records["jct"] >= 1).all()
    if policy.endswith("-np"):
        assert (res.records["switches"] == 0).all()  # never re-allocates a running task


def test_non_preemptive_variants_send_no_realloc() -> None:
    scen = small("synthetic-3", 20)
    eng = Engine(scen, strict=True)
    eng.reset(0)
    for name in ("optimus-np", "tiresias-np"):
        pol = make_policy(name, scen)
        pol.reset(0)
        assert pol.act(build_observations(eng)).realloc is None


# ---------------------------------------------------------------------------------------------
# hand-made cases on one cluster


def one_cluster(cpu: int, gpu: int, tasks: int, clusters: int = 1) -> tuple[Scenario, Engine]:
    data = {
        "name": "hand-made", "resources": ["cpu", "gpu"], "grid_max": {"cpu": 16, "gpu": 16},
        "switch_weight": 0.5, "window_size": 10, "visibility": "all",
        "arrivals": {"process": "poisson", "rate": 1.0, "tasks": tasks},
        "clusters": [{"name": f"c{i}", "nodes": [{"cpu": cpu, "gpu": gpu}]} for i in range(clusters)],
        "task_types": [{"name": "LM", "minimum": {"cpu": 2, "gpu": 1},
                        "progress": {"model": "synthetic", "gpu_scale": 16.0}}],
    }
    scen = parse_scenario(data, "<test>")
    wl = Workload(arrival_slot=np.zeros(tasks, dtype=np.int64), task_type=np.zeros(tasks, dtype=np.int64),
                  visible=np.ones((tasks, clusters), dtype=bool), work=np.ones(tasks),
                  deadline=np.full(tasks, -1, dtype=np.int64))
    eng = Engine(scen, strict=True)
    eng.reset(0, workload=wl)
    return scen, eng


def start_all(eng: Engine, count: int) -> None:
    """Start window places 0..count-1 of cluster 0 at the minimum, one per round."""
    for place in range(count):
        eng.play_round(np.array([place]), np.array([0]), np.array([[2, 1]]))


def realloc_of(act, eng: Engine, task: int) -> list[int]:
    place = int(np.flatnonzero(eng.running[0] == task)[0])
    return act.realloc[0, place].tolist()


def set_attained(pol: TiresiasPolicy, gpu_slots: list[float]) -> None:
    """Give cluster 0's tasks 0, 1, ... these GPU-slots, as if counted over earlier slots."""
    pol.service.gpu_slots = [{t: v for t, v in enumerate(gpu_slots)}]


def test_tiresias_gives_gpus_to_least_attained_service() -> None:
    scen, eng = one_cluster(cpu=16, gpu=4, tasks=4)
    start_all(eng, 4)
    pol = TiresiasPolicy(scen)
    pol.reset(0)
    set_attained(pol, [10.0, 0.0, 5.0, 20.0])  # task 1 has the least attained service
    act = pol.act(build_observations(eng))
    # task 1 stays the least served after each of the 4 GPUs, and gets all 16 CPUs (grid max)
    assert realloc_of(act, eng, 1) == [16, 4]
    for t in (0, 2, 3):
        assert realloc_of(act, eng, t) == [0, 0]  # paused
    assert act.task[0] == -1  # window empty: nothing to admit


def test_tiresias_splits_cpus_evenly_among_tasks_with_gpus() -> None:
    scen, eng = one_cluster(cpu=16, gpu=3, tasks=3)
    start_all(eng, 3)
    pol = TiresiasPolicy(scen)
    pol.reset(0)
    set_attained(pol, [2.0, 2.0, 2.0])  # equal service: one GPU each, in start order
    act = pol.act(build_observations(eng))
    # ⌊16 / 3⌋ = 5 CPUs each, the remaining one to the earliest-started task
    assert [realloc_of(act, eng, t) for t in range(3)] == [[6, 1], [5, 1], [5, 1]]


def test_tiresias_high_queue_serves_the_earliest_start_first() -> None:
    """Two levels: the lower half by attained service is the high-priority queue, and inside
    a queue the earliest-started task goes first, even with more service than a queue mate."""
    scen, eng = one_cluster(cpu=16, gpu=4, tasks=4)
    start_all(eng, 1)  # task 0 starts in slot 0
    eng.play_round(np.array([-1]), np.array([0]), np.zeros((1, 2), dtype=np.int64))  # slot ends
    for t in (1, 2, 3):  # tasks 1..3 start in slot 1
        eng.play_round(np.array([int(np.flatnonzero(eng.window[0] == t)[0])]), np.array([0]),
                       np.array([[2, 1]]))
    pol = TiresiasPolicy(scen)
    pol.reset(0)
    set_attained(pol, [2.0, 1.0, 5.0, 9.0])  # high queue = {task 1 (1), task 0 (2)}
    act = pol.act(build_observations(eng))
    # task 0 stays in the high queue (service 3, 4, 5 ties task 2 but started earlier)
    assert realloc_of(act, eng, 0) == [16, 4]
    for t in (1, 2, 3):
        assert realloc_of(act, eng, t) == [0, 0]


class CountingEngine(Engine):
    """The engine, also counting each task's GPU-slots at every slot end (the reference)."""

    def reset(self, seed, workload=None) -> None:
        super().reset(seed, workload)
        self.gpu_slots = np.zeros(self.T + 1)

    def _progress(self, ids: np.ndarray) -> None:
        self.gpu_slots[ids] += self.alloc[ids, self.static.gpu]
        super()._progress(ids)


@pytest.mark.parametrize("policy", ["tiresias", "tiresias-np"])
@pytest.mark.parametrize("scenario", scenario_params(["synthetic-3", "edge-default"]))
def test_tiresias_counts_the_gpu_slots_the_engine_gives(policy: str, scenario: str) -> None:
    """The attained service Tiresias counts from its observations equals the GPU-slots the
    engine gave every running task (re-allocations, pauses and starts in any round included),
    in every round, over two episodes of one policy instance."""
    scen = small(scenario, 40)
    pol = make_policy(policy, scen)
    eng = CountingEngine(scen, strict=True)
    check = ServiceCheck(pol, lambda: eng.gpu_slots)
    for seed in (3, 4):
        run_episode(scen, check, seed=seed, engine=eng)
    assert check.checked > 0


def test_admission_skips_a_task_a_lower_agent_chose() -> None:
    scen, eng = one_cluster(cpu=16, gpu=16, tasks=2, clusters=2)
    pol = make_policy("optimus", scen)
    pol.reset(0)
    act = pol.act(build_observations(eng))
    assert eng.window[0, act.task[0]] == 0 and eng.window[1, act.task[1]] == 1


def test_admission_stops_at_floor_capacity_over_minimum() -> None:
    scen, eng = one_cluster(cpu=4, gpu=16, tasks=3)  # ⌊(4, 16) / (2, 1)⌋ = 2 tasks
    start_all(eng, 2)
    for name in ("optimus", "tiresias"):
        pol = make_policy(name, scen)
        pol.reset(0)
        assert pol.act(build_observations(eng)).task[0] == -1


# ---------------------------------------------------------------------------------------------
# Optimus' speed model


@pytest.mark.parametrize("ttype", [0, 1])
def test_optimus_fit_reproduces_synthetic_progress(ttype: int) -> None:
    scen = load_scenario("synthetic-3")
    st = static_tables(scen)
    params = fit_speed_model(st, ttype)  # default: the allocations at or above the minimum
    truth = progress_at_start(st, ttype)
    c, g = np.meshgrid(np.arange(truth.shape[0]), np.arange(truth.shape[1]), indexing="ij")
    ok = (c >= 2) & (g >= 1)
    fitted = speed_model(c[ok].astype(float), g[ok].astype(float), *params)
    assert np.max(np.abs(fitted / truth[ok] - 1)) < 0.01


def test_authors_fit_layout_is_transposed_on_a_square_grid() -> None:
    """The authors' pairing fits LM (GPU-bound) as if it were CPU-bound: documents the
    defect that the `fit_points="authors"` option keeps to reproduce the reference."""
    st = static_tables(load_scenario("synthetic-3"))
    params = fit_speed_model(st, 1, "authors")
    assert speed_model(16.0, 2.0, *params) > 2 * speed_model(2.0, 16.0, *params)
    truth = progress_at_start(st, 1)
    assert truth[2, 16] > 2 * truth[16, 2]


def test_optimus_gives_a_gpu_bound_task_the_gpus() -> None:
    scen, eng = one_cluster(cpu=16, gpu=4, tasks=1)
    pol = OptimusPolicy(scen)
    pol.reset(0)
    act = pol.act(build_observations(eng))
    assert act.task[0] == 0
    assert act.alloc[0, 1] == 4  # every GPU shortens an LM task


def test_optimus_shares_by_gain_per_unit_held() -> None:
    """Two identical fresh LM tasks: the greedy alternates GPUs (the gain per unit held is
    larger for the task holding fewer), so they end up with equal GPUs."""
    scen, eng = one_cluster(cpu=16, gpu=8, tasks=2)
    start_all(eng, 1)
    pol = OptimusPolicy(scen)
    pol.reset(0)
    act = pol.act(build_observations(eng))
    assert realloc_of(act, eng, 0)[1] == act.alloc[0, 1] == 4


@pytest.mark.parametrize("name", ["optimus-np", "tiresias-np"])
def test_non_preemptive_candidate_gets_its_share_under_load(name: str) -> None:
    """With 8 identical tasks waiting on an empty (16, 16) cluster, the candidate is sized as
    one of 8 (2 GPUs), not given the whole cluster."""
    scen, eng = one_cluster(cpu=16, gpu=16, tasks=8)
    pol = make_policy(name, scen)
    pol.reset(0)
    act = pol.act(build_observations(eng))
    assert act.task[0] == 0 and act.alloc[0, 1] == 2
