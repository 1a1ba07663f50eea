"""The time-indexed program of `optimal`: each task's options, a list schedule that caps the
time windows, the binaries (task, option, start) and the sparse capacity rows over them."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix

from tapfinger.evaluation.bounds import alloc_range
from tapfinger.sim.scenario import Scenario
from tapfinger.sim.speed import efficient_allocations, slot_table
from tapfinger.sim.tables import StaticTables, static_tables
from tapfinger.sim.workload import Workload


class InstanceTooLargeError(ValueError):
    """The episode is too large for the exact integer program (see MAX_TASKS, MAX_BINARIES)."""


# ------------------------------------------------------------------------------ options


@lru_cache(maxsize=1024)
def pareto_allocs(scenario: Scenario, type_index: int, work: float,
                  capacity: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Non-dominated (allocation [m, R], duration [m]) of a task type on a node capacity, in
    (cpu, gpu) order. Resources other than cpu and gpu do not speed a task up: they get their
    minimum."""
    st = static_tables(scenario)
    rng = alloc_range(scenario, type_index, np.asarray(capacity))
    R = st.type_min.shape[1]
    if rng is None:
        return np.zeros((0, R), dtype=np.int64), np.zeros(0, dtype=np.int64)
    low, high = rng
    cells = efficient_allocations(slot_table(scenario, work)[type_index], (int(low[st.cpu]), int(low[st.gpu])),
                                  (int(high[st.cpu]), int(high[st.gpu])))
    cells = cells[np.lexsort((cells[:, 2], cells[:, 1]))]  # (cpu, gpu) order: the model's tie order
    alloc = np.tile(low, (cells.shape[0], 1))
    alloc[:, st.cpu], alloc[:, st.gpu] = cells[:, 1], cells[:, 2]
    dur = cells[:, 0].copy()
    alloc.setflags(write=False)  # cached and shared by every call
    dur.setflags(write=False)
    return alloc, dur


@dataclass
class Option:
    node: int
    cluster: int
    alloc: np.ndarray
    duration: int


def task_options(scenario: Scenario, workload: Workload) -> list[list[Option]]:
    """Per task: every (node of a cluster that sees it, efficient allocation on that node)."""
    st = static_tables(scenario)
    out: list[list[Option]] = []
    for t in range(workload.num_tasks):
        opts = []
        for n in np.flatnonzero(workload.visible[t, st.node_cluster]):
            allocs, durs = pareto_allocs(scenario, int(workload.task_type[t]), float(workload.work[t]),
                                         tuple(int(x) for x in st.node_capacity[n]))
            opts += [Option(int(n), int(st.node_cluster[n]), a, int(d)) for a, d in zip(allocs, durs)]
        out.append(opts)
    return out


# ------------------------------------------------------------------------------ list schedule


def list_schedule(scenario: Scenario, workload: Workload, options: list[list[Option]],
                  order: np.ndarray) -> tuple[int, list[tuple[Option, int]]]:
    """Greedy: in `order`, each task takes the option that finishes earliest given the tasks
    placed before it (ties: fewer resources). Returns (total JCT, [(option, start)] per task)."""
    st = static_tables(scenario)
    arr = workload.arrival_slot
    # Makespan bound of any such schedule: each task can at worst wait for all earlier ones.
    H = int(arr.max()) + sum(min(o.duration for o in opts) for opts in options) + 1
    used = np.zeros((st.node_capacity.shape[0], H, st.type_min.shape[1]), dtype=np.int64)
    running = np.zeros((scenario.num_clusters, H), dtype=np.int64)
    chosen: list[tuple[Option, int] | None] = [None] * workload.num_tasks
    total = 0
    for t in order:
        best_key, best = None, None
        a = int(arr[t])
        for o in options[t]:
            ok = ((used[o.node, a:] + o.alloc <= st.node_capacity[o.node]).all(axis=1)
                  & (running[o.cluster, a:] < st.max_running[o.cluster]))
            # first s with ok[s : s + d] all true: a window sum of d over the ok flags
            csum = np.concatenate([[0], np.cumsum(ok)])
            full = np.flatnonzero(csum[o.duration:] - csum[:-o.duration] == o.duration)
            if not full.size:
                continue
            s = a + int(full[0])
            key = (s + o.duration, int(o.alloc.sum()))
            if best_key is None or key < best_key:
                best_key, best = key, (o, s)
        assert best is not None, "list schedule horizon too short"
        o, s = best
        used[o.node, s: s + o.duration] += o.alloc
        running[o.cluster, s: s + o.duration] += 1
        chosen[t] = best
        total += s - a + o.duration
    return total, chosen  # type: ignore[return-value]


def best_list_schedule(scenario: Scenario, workload: Workload, options: list[list[Option]],
                       lb: np.ndarray, tries: int = 12) -> tuple[int, list[tuple[Option, int]]]:
    """The best `list_schedule` over a few task orders (arrival order with several tie rules)."""
    T = workload.num_tasks
    arr = workload.arrival_slot
    orders = [np.lexsort((np.arange(T), arr)), np.lexsort((lb, arr)), np.lexsort((-lb, arr))]
    rng = np.random.default_rng(0)  # fixed: the horizon must not depend on global state
    orders += [np.lexsort((rng.random(T), arr)) for _ in range(tries)]
    return min((list_schedule(scenario, workload, options, o) for o in orders), key=lambda r: r[0])


# ------------------------------------------------------------------------------ the program


@dataclass(frozen=True)
class Binaries:
    """The program's binaries: x_j = 1 iff task[j] runs on node[j] (of cluster[j]) with alloc[j]
    for duration[j] slots from slot start[j]."""

    task: np.ndarray
    start: np.ndarray
    duration: np.ndarray
    node: np.ndarray
    cluster: np.ndarray
    alloc: np.ndarray  # [V, R]

    @property
    def size(self) -> int:
        return int(self.task.size)

    @property
    def horizon(self) -> int:
        return int((self.start + self.duration).max())

    def cost(self, arrival: np.ndarray) -> np.ndarray:
        """Each binary's JCT: start - arrival + duration."""
        return (self.start - arrival[self.task] + self.duration).astype(np.float64)

    def subset(self, idx: np.ndarray) -> "Binaries":
        return Binaries(self.task[idx], self.start[idx], self.duration[idx], self.node[idx], self.cluster[idx],
                        self.alloc[idx])


def enumerate_binaries(workload: Workload, options: list[list[Option]], lb: np.ndarray, slack: int,
                       max_tasks: int, max_binaries: int) -> Binaries:
    """Every (task, option, start) with start + d <= arrival + lb + slack (see the package
    docstring: no optimal schedule lies outside these windows). Raises InstanceTooLargeError
    beyond `max_binaries`."""
    T = workload.num_tasks
    arr = workload.arrival_slot.astype(np.int64)
    var_task, var_start, var_dur, var_node, var_cluster, var_alloc = [], [], [], [], [], []
    count = 0
    for t, opts in enumerate(options):
        latest_finish = int(arr[t] + lb[t] + slack)
        for o in opts:
            n_starts = latest_finish - o.duration - int(arr[t]) + 1
            if n_starts <= 0:
                continue
            count += n_starts
            if count > max_binaries:
                raise InstanceTooLargeError(
                    f"optimal(): the integer program would need more than {max_binaries} binary "
                    f"variables ({T} tasks, time windows of up to {slack + int(lb.max())} slots from "
                    f"the list schedule); the limits are {max_tasks} tasks and {max_binaries} binaries. "
                    f"Fix: fewer tasks or less load (arrivals.tasks, arrivals.rate), or "
                    f"tapfinger.evaluation.bounds.lower_bound.")
            var_task.append(np.full(n_starts, t))
            var_start.append(np.arange(int(arr[t]), int(arr[t]) + n_starts))
            var_dur.append(np.full(n_starts, o.duration))
            var_node.append(np.full(n_starts, o.node))
            var_cluster.append(np.full(n_starts, o.cluster))
            var_alloc.append(np.tile(o.alloc, (n_starts, 1)))
    return Binaries(np.concatenate(var_task), np.concatenate(var_start), np.concatenate(var_dur),
                    np.concatenate(var_node), np.concatenate(var_cluster), np.concatenate(var_alloc))


def assignment_rows(binaries: Binaries, T: int) -> csr_matrix:
    """Rows `A x = 1`: each task runs exactly one of its binaries."""
    V = binaries.size
    return coo_matrix((np.ones(V), (binaries.task, np.arange(V))), shape=(T, V)).tocsr()


def capacity_rows(st: StaticTables, num_clusters: int, T: int, binaries: Binaries,
                  H: int) -> tuple[csr_matrix, np.ndarray]:
    """Sparse rows `A x <= b` of node capacity (node, resource, slot) and cluster running count
    (cluster, slot) for the binaries given, leaving out rows that can never bind."""
    vt, vs, vd, vn, vc, va = (binaries.task, binaries.start, binaries.duration, binaries.node,
                              binaries.cluster, binaries.alloc)
    V = vt.size
    num_nodes, R = st.node_capacity.shape
    # One entry per (binary, slot it occupies).
    occ_var = np.repeat(np.arange(V), vd)
    occ_slot = np.repeat(vs - np.concatenate([[0], np.cumsum(vd)[:-1]]), vd) + np.arange(occ_var.size)
    rows, cols, vals = [], [], []
    for r in range(R):  # capacity rows numbered n * R * H + r * H + u
        coef = va[occ_var, r]
        nz = coef > 0
        rows.append(vn[occ_var[nz]] * R * H + r * H + occ_slot[nz])
        cols.append(occ_var[nz])
        vals.append(coef[nz])
    cap_ub = np.repeat(st.node_capacity.reshape(-1), H).astype(np.float64)  # node, resource, slot
    base = num_nodes * R * H  # running-count rows (cluster, slot) come after
    rows.append(base + vc[occ_var] * H + occ_slot)
    cols.append(occ_var)
    vals.append(np.ones(occ_var.size, dtype=np.int64))
    run_ub = np.repeat(st.max_running, H).astype(np.float64)
    # The count cap is implied when a resource every type needs already limits the count as
    # much (the usual case: one minimum for all types); such rows only slow HiGHS' presolve.
    need = st.type_min.min(axis=0)  # [R] least any type asks for
    if np.any(need > 0):
        per_node = (st.node_capacity[:, need > 0] // need[need > 0]).min(axis=1)
        implied = np.bincount(st.node_cluster, weights=per_node, minlength=num_clusters)
        run_ub[np.repeat(implied <= st.max_running, H)] = np.inf
    r_all, c_all, v_all = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    ub_all = np.concatenate([cap_ub, run_ub])
    # A row binds only if the largest use of every task together can exceed it.
    worst = np.zeros((ub_all.size, T), dtype=np.int64)
    np.maximum.at(worst, (r_all, vt[c_all]), v_all)
    binding = np.flatnonzero(worst.sum(axis=1) > ub_all)  # inf never binds
    remap = np.full(ub_all.size, -1)
    remap[binding] = np.arange(binding.size)
    keep = remap[r_all] >= 0
    A = coo_matrix((v_all[keep].astype(np.float64), (remap[r_all[keep]], c_all[keep])),
                   shape=(binding.size, V)).tocsr()
    return A, ub_all[binding]
