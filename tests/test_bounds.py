"""The per-task lower bound (tapfinger/evaluation/bounds.py) for tasks whose work is not 1.

Hand-made workloads with work 0.5, 1.5, 2, 4, checked against slot counts worked out by hand
(or by iterating DESIGN.md's progress formula here, in plain Python floats); a property test
that no policy's JCT in the engine beats its task's bound; and the shipped `philly-edge`
scenario, whose trace-derived tasks have work between 0.25 and 4.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents.heuristics.estimates import SpeedModel
from agents.registry import make_policy
from tapfinger.evaluation.bounds import best_slots_per_node, lower_bound
from tapfinger.sim.progress import NEVER, finished, progress_step, slots_to_finish
from tapfinger.sim.speed import slot_table
from tapfinger.sim.tables import static_tables
from tapfinger.sim.engine import Engine
from tapfinger.evaluation.optimal import small_scenario
from envs.episode import run_episode
from tapfinger.sim.scenario import Cluster, load_scenario
from tapfinger.sim.workload import Workload, make_workload

PAPER_POLICIES = ["greedy", "fifo", "sjf", "optimus", "tiresias", "random"]


class FixedWorkloadEngine(Engine):
    """An engine whose `reset(seed)` (as `run_episode` calls it) plays a given workload."""

    def __init__(self, scenario, workload: Workload):
        super().__init__(scenario)
        self.fixed = workload

    def reset(self, seed: int, workload: Workload | None = None) -> None:
        super().reset(seed, workload=self.fixed if workload is None else workload)


def make(scenario, tasks):
    """tasks: (arrival slot, type name, visible clusters, work)."""
    names = [t.name for t in scenario.task_types]
    vis = np.zeros((len(tasks), scenario.num_clusters), dtype=bool)
    for i, t in enumerate(tasks):
        vis[i, t[2]] = True
    return Workload(arrival_slot=np.array([t[0] for t in tasks], dtype=np.int64),
                    task_type=np.array([names.index(t[1]) for t in tasks], dtype=np.int64), visible=vis,
                    work=np.array([t[3] for t in tasks], dtype=np.float64),
                    deadline=np.full(len(tasks), -1, dtype=np.int64))


def lm_slots(gpus: int, work: float) -> int:
    """Slots an LM task needs alone at `gpus` GPUs: iterate Δp = tanh(g/16)·sqrt(1.2 − p) / work
    until p reaches 1 (DESIGN.md's synthetic formula, the work dividing each slot's progress)."""
    w, p, n = math.tanh(gpus / 16), 0.0, 0
    while p < 1 - 1e-9:
        p += w * math.sqrt(max(1.2 - p, 0.0)) / work
        n += 1
    return n


def two_clusters():
    """synthetic-3 with cluster 0 = (4 CPU, 4 GPU) and cluster 1 = (16, 16); grid (16, 16)."""
    base = load_scenario("synthetic-3")
    return dataclasses.replace(base, clusters=(Cluster("small", ((4, 4),)), Cluster("big", ((16, 16),))))


# Each row: (type, visible clusters, work, hand-computed fewest slots alone).
HAND = [
    ("IMG", [0], 2.0, 8),  # 0.25 / 2 = 0.125 per slot: 8 slots
    ("IMG", [1], 0.5, 2),  # 0.5 per slot: 2
    ("IMG", [0, 1], 1.5, 6),  # 1/6 per slot: 6 (the float sum reaches 1 - 1e-16, within FINISH_EPS)
    ("IMG", [0], 4.0, 16),
    ("IMG", [1], 1.0, 4),
    # LM at 16 GPUs (the grid max), work 2: 0.417 -> 0.754 -> 1.008: 3 slots (work 1: 2 slots)
    ("LM", [1], 2.0, 3),
    ("LM", [0, 1], 2.0, 3),  # the better of the two clusters
    # LM at 4 GPUs (cluster 0 only), work 0.5: 0.537 -> 0.936 -> 1.188: 3 slots (work 1: 5)
    ("LM", [0], 0.5, 3),
    ("LM", [1], 0.5, 1),  # 2 · tanh(1) · sqrt(1.2) = 1.67 in one slot
    ("LM", [0], 2.0, None),  # 4 GPUs, work 2: iterated in the test
    ("LM", [0], 4.0, None),
    ("LM", [1], 4.0, None),
]


def test_bound_of_tasks_with_work_other_than_one():
    sc = two_clusters()
    expect = [s if s is not None else lm_slots(16 if vis == [1] else 4, work) for _, vis, work, s in HAND]
    assert expect[5] == lm_slots(16, 2.0) and expect[7] == lm_slots(4, 0.5) and expect[8] == lm_slots(16, 0.5)
    assert lm_slots(16, 1.0) == 2 and lm_slots(4, 1.0) == 5  # DESIGN.md's counts for work 1
    wl = make(sc, [(i, t, vis, work) for i, (t, vis, work, _) in enumerate(HAND)])
    per_task, mean = lower_bound(sc, wl)
    assert per_task.tolist() == expect
    assert mean == pytest.approx(np.mean(expect))
    assert expect[9] > 5 and expect[11] > 3  # more work, more slots than at work 1


def test_slot_tables_scale_with_work():
    sc = two_clusters()
    tables = static_tables(sc)
    img, lm = 0, 1
    assert [t.name for t in sc.task_types] == ["IMG", "LM"]
    for work, img_slots in [(0.5, 2), (1.0, 4), (2.0, 8), (4.0, 16)]:
        table = slot_table(sc, work)
        assert table[img, 2, 1] == table[img, 16, 16] == img_slots
        assert table[lm, 2, 16] == lm_slots(16, work) and table[lm, 2, 4] == lm_slots(4, work)
        assert table[lm, 2, 7] == lm_slots(7, work)
        assert (table[:, :2, :] > 10**9).all()  # below the 2-CPU minimum: never
        # cluster 0's node has 4 GPUs, cluster 1's 16: LM's best alone on each
        assert best_slots_per_node(sc, work)[lm].tolist() == [lm_slots(4, work), lm_slots(16, work)]
    assert tables.node_capacity.tolist() == [[4, 4], [16, 16]]


def test_bound_is_tight_for_a_task_alone_in_the_engine():
    # Each task alone and seen by one cluster only: greedy starts it at once with its fastest
    # allocation, and the engine's JCT is the hand-computed count.
    sc = two_clusters()
    for t, vis, work, slots in HAND:
        if len(vis) > 1:
            continue
        wl = make(sc, [(0, t, vis, work)])
        res = run_episode(sc, make_policy("greedy", sc), 0, engine=FixedWorkloadEngine(sc, wl))
        expect = slots if slots is not None else lm_slots(16 if vis == [1] else 4, work)
        assert res.records["jct"].tolist() == [expect] == lower_bound(sc, wl)[0].tolist(), (t, vis, work)


def test_the_heuristics_count_what_the_engine_counts_at_the_finish_threshold():
    # IMG at work 1.5 makes 0.25 / 1.5 per slot; six float additions give 1 - 1e-16, which the
    # engine finishes (p >= 1 - FINISH_EPS). The bound, the heuristics' speed model (its slot
    # counts, remaining times and efficient options) and the engine must all say 6.
    sc = two_clusters()
    model = SpeedModel(sc)
    alloc = np.array([2, 1])
    assert slot_table(sc, 1.5)[0, 2, 1] == model.slots_for(0, alloc, 1.5) == model.remaining(0, alloc, 0.0, 1.5) == 6
    assert model.options_for(0, 1.5)[0].slots == 6
    wl = make(sc, [(0, "IMG", [0], 1.5)])
    res = run_episode(sc, make_policy("greedy", sc), 0, engine=FixedWorkloadEngine(sc, wl))
    assert res.records["jct"].tolist() == [6]


def test_scalar_and_array_progress_counts_agree_to_the_bit():
    rng = np.random.default_rng(7)
    w, b = rng.uniform(0, 1.2, 300), rng.uniform(0, 0.3, 300)
    b[:20] = 0.0
    w[:10] = 0.0  # ten cells that never progress
    work, p = rng.uniform(0.25, 4.0, 300), rng.uniform(0, 1, 300)
    step = progress_step(w, b, p, work)
    assert [float(x) for x in step] == [progress_step(*map(float, args)) for args in zip(w, b, p, work)]
    counts = slots_to_finish(w, b, work, p)
    assert counts.tolist() == [slots_to_finish(*map(float, args)) for args in zip(w, b, work, p)]
    assert (counts[:10] == NEVER).all() and (counts[10:] < 100).all()
    assert slots_to_finish(0.5, 0.1, progress=1.0) == 0 and finished(1.0 - 1e-10) and not finished(1.0 - 1e-8)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(clusters=st.integers(2, 3), scenario_seed=st.integers(0, 1000), tasks=st.integers(2, 7),
       data=st.data())
def test_no_policy_beats_the_bound_of_any_task(clusters, scenario_seed, tasks, data):
    sc = small_scenario(clusters, seed=scenario_seed, tasks=tasks)
    wl = make_workload(sc, scenario_seed)
    work = data.draw(st.lists(st.floats(0.25, 4.0, allow_nan=False), min_size=tasks, max_size=tasks))
    wl = dataclasses.replace(wl, work=np.asarray(work, dtype=np.float64))
    bound, _ = lower_bound(sc, wl)
    for name in PAPER_POLICIES:
        res = run_episode(sc, make_policy(name, sc, seed=0), scenario_seed, engine=FixedWorkloadEngine(sc, wl))
        assert not res.truncated
        jct = res.records["jct"]
        assert (jct >= 1).all(), name
        worse = np.flatnonzero(jct < bound)
        assert worse.size == 0, (f"{name}: tasks {worse.tolist()} (work {wl.work[worse].tolist()}) finished in "
                                 f"{jct[worse].tolist()} slots, below their bounds {bound[worse].tolist()}")


def test_greedy_on_philly_edge_never_beats_a_task_bound():
    sc = load_scenario("philly-edge")
    eng = Engine(sc)
    res = run_episode(sc, make_policy("greedy", sc), 0, engine=eng)
    work = eng.workload.work
    assert work.min() < 0.5 and work.max() > 2  # the point: tasks of very different sizes
    bound, mean = lower_bound(sc, eng.workload)
    jct = res.records["jct"]
    assert not res.truncated and (jct >= 1).all()
    assert (jct >= bound).all()
    assert res.avg_jct >= mean
    # The bound grows with the work: among tasks of one type, the biggest needs more slots
    # alone than the smallest.
    for k in np.unique(eng.workload.task_type):
        rows = np.flatnonzero(eng.workload.task_type == k)
        small, big = rows[np.argmin(work[rows])], rows[np.argmax(work[rows])]
        if work[big] >= 2 * work[small]:
            assert bound[big] > bound[small]


def test_cached_tables_are_read_only():
    # slot_table and static_tables are cached and shared by every caller: a write must fail
    # rather than corrupt them for everyone else.
    sc = load_scenario("synthetic-3")
    table = slot_table(sc)
    before = int(table[0, 2, 1])
    with pytest.raises(ValueError):
        table[0, 2, 1] = 1
    assert slot_table(sc)[0, 2, 1] == before == 4
    st = static_tables(sc)
    with pytest.raises(ValueError):
        st.node_capacity[0, 0] = 0
    with pytest.raises(ValueError):
        best_slots_per_node(sc)[0, 0] = 0
    assert static_tables(sc).node_capacity[0].tolist() == [16, 16]
