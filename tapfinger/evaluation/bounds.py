"""Per-task lower bound on an episode's average JCT, exact to the engine's arithmetic.

Each task is imagined alone in the system: started in its arrival slot, on the best node of
the best cluster that sees it, with the fixed allocation that finishes it in the fewest slots
(at least the task type's minimum, at most `grid_max`, at most the node's capacity). JCT counts
slot ends in the system, so a task started in its arrival slot that needs d slots has JCT d,
and no schedule can give it less: the bound holds for every non-preemptive policy.

It also holds for the preemptive ones with the shipped progress models: there the per-slot
progress of one allocation dominates every other allocation's at every progress level
(synthetic: W grows with the GPUs, B is constant; profile: W = 0), a re-allocation only
scales a slot's progress by `switch_weight` <= 1, a pause makes none, and p + Δp(p) is
non-decreasing in p (W <= 2·sqrt(0.2)), so being behind never helps to catch up.

Slot counts are computed with exactly the engine's float operations: both use
`tapfinger.sim.progress.progress_step` and `finished` (the slot table is
`tapfinger.sim.speed.slot_table`), so a task that the engine finishes in d slots gets d here,
never d ± 1 from rounding.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from tapfinger.sim.progress import NEVER
from tapfinger.sim.scenario import Scenario
from tapfinger.sim.speed import slot_table
from tapfinger.sim.tables import static_tables
from tapfinger.sim.workload import Workload


def alloc_range(scenario: Scenario, type_index: int, capacity: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """[low, high] per resource a task of this type may get on a node of this capacity, or None
    if the node cannot hold its minimum."""
    st = static_tables(scenario)
    low = st.type_min[type_index]
    high = np.minimum(st.grid_max, np.asarray(capacity, dtype=np.int64))
    if np.any(low > high):
        return None
    return low, high


@lru_cache(maxsize=256)
def _best_per_node(scenario: Scenario, work: float) -> np.ndarray:
    st = static_tables(scenario)
    table = slot_table(scenario, work)
    K, num_nodes = st.type_min.shape[0], st.node_capacity.shape[0]
    best = np.full((K, num_nodes), NEVER, dtype=np.int64)
    # Nodes of equal capacity share the answer; there are few distinct capacities.
    caps, inverse = np.unique(st.node_capacity, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    for k in range(K):
        for ci, cap in enumerate(caps):
            rng = alloc_range(scenario, k, cap)
            if rng is None:
                continue
            low, high = rng
            sub = table[k, low[st.cpu]: high[st.cpu] + 1, low[st.gpu]: high[st.gpu] + 1]
            best[k, inverse == ci] = sub.min()
    best.setflags(write=False)
    return best


def best_slots_per_node(scenario: Scenario, work: float = 1.0) -> np.ndarray:
    """[K, num_nodes]: fewest slots a task of each type needs alone on each node (NEVER if its
    minimum does not fit there)."""
    return _best_per_node(scenario, float(work))


def lower_bound(scenario: Scenario, workload: Workload) -> tuple[np.ndarray, float]:
    """Per-task lower bound on JCT (int64 [T]) and its mean, the bound on the episode's avg JCT.

    A task no visible node can ever run gets NEVER (and the mean is inf): no policy finishes it.
    """
    st = static_tables(scenario)
    T = workload.num_tasks
    if T == 0:
        return np.zeros(0, dtype=np.int64), float("nan")
    vis_node = workload.visible[:, st.node_cluster]  # [T, num_nodes]
    per_task = np.full(T, NEVER, dtype=np.int64)
    works = np.asarray(workload.work, dtype=np.float64)
    for w in np.unique(works):  # one table per distinct amount of work (usually just 1.0)
        rows = np.flatnonzero(works == w)
        best = _best_per_node(scenario, float(w))[workload.task_type[rows]]  # [rows, nodes]
        per_task[rows] = np.where(vis_node[rows], best, NEVER).min(axis=1)
    mean = float("inf") if np.any(per_task >= NEVER) else float(per_task.mean())
    return per_task, mean
