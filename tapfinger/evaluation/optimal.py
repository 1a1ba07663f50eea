"""The exact offline optimum of small episodes, by a time-indexed integer program (HiGHS).

Every task chooses exactly one option (node, start slot, allocation):

* the node lies in a cluster that sees the task, and holds the task type's minimum;
* the start slot is at or after the arrival slot;
* the allocation is at least the minimum and at most `grid_max` and the node's capacity in
  every resource, and stays fixed while the task runs (non-preemptive); it runs for
  d(type, allocation) slots, counted with the engine's own float arithmetic
  (`tapfinger.evaluation.bounds.slot_table`), and holds its resources in slots start .. start + d - 1;
* in every slot, the tasks running on a node fit its capacity in every resource, and a cluster
  runs at most `max_running` tasks (the engine's cap, see `tapfinger.sim.tables`).

The objective is the sum of JCT = start - arrival + d, which is exactly the engine's count of
slot ends in the system.

Three things keep the program small without losing optimality. Dominated allocations (one
no faster than another that uses no more of any resource) are dropped: swapping in the
dominating one keeps any schedule feasible and no worse. Each task's latest finish is capped:
with a feasible schedule of total JCT J (a list schedule built here) and per-task lower bounds
lb, any optimal schedule gives task t a JCT of at most J - sum(lb) + lb[t]; so the per-task
time windows, and the horizon, lose no optimal solution. And reduced-cost fixing from the LP
relaxation (see `optimal`) hands HiGHS only the binaries that can appear in a schedule better
than the best known one; on the 12-task instances of `small_scenario` that is about a quarter.

What is *not* modelled: the environment's pending window (a cluster can start only the first
`window_size` waiting tasks it sees until a slot ends) and the rounds (one start per agent per
round; conflicts). Rounds never restrict which set of tasks can start in a slot, but the window
can. So `optimal` is the exact optimum of the environment whenever no window overflows in the
optimal schedule (`replay_schedule` checks this by playing the schedule in the engine), and in
every case a lower bound on the average JCT of every non-preemptive policy. Preemptive policies
can beat it (they can resize running tasks), never `tapfinger.evaluation.bounds.lower_bound`.

Small random instances for the optimality-gap study come from `small_scenario`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp
from scipy.sparse import coo_matrix, csr_matrix

from tapfinger.evaluation.bounds import NEVER, alloc_range, lower_bound, slot_table
from tapfinger.sim.engine import Engine
from tapfinger.sim.tables import StaticTables, static_tables
from tapfinger.sim.scenario import Cluster, Scenario, load_scenario
from tapfinger.sim.workload import Workload, make_workload

# Limits of `optimal`: beyond them HiGHS may take minutes to hours; use `lower_bound` instead.
MAX_TASKS = 20
MAX_BINARIES = 60_000
DEFAULT_TIME_LIMIT = 300.0  # seconds given to HiGHS before giving up
# First restriction of reduced-cost fixing: schedules within this many JCT slots of the LP bound.
INITIAL_GAP = 3.0
_RC_TOL = 1e-3  # slack on reduced costs: keeping a few more binaries is always safe


class InstanceTooLargeError(ValueError):
    """The episode is too large for the exact integer program (see MAX_TASKS, MAX_BINARIES)."""


class OptimumNotFoundError(RuntimeError):
    """HiGHS stopped (time limit, or an infeasible model, which would be a bug) without a proof."""


@dataclass(frozen=True)
class OptimalSchedule:
    """An optimal non-preemptive schedule of one episode (global node indices)."""

    avg_jct: float
    jct: np.ndarray  # [T] slots from arrival to finish (= start - arrival + duration)
    start: np.ndarray  # [T] slot the task starts in
    duration: np.ndarray  # [T] slots it runs
    cluster: np.ndarray  # [T]
    node: np.ndarray  # [T] global node index (engine's numbering)
    alloc: np.ndarray  # [T, R]
    lower_bound: float  # tapfinger.evaluation.bounds.lower_bound's mean, for reference
    lp_bound: float  # the LP relaxation's average JCT (a stronger lower bound)
    list_avg_jct: float  # the list schedule that capped the time windows
    horizon: int  # slots modelled
    num_binaries: int  # binaries of the time-indexed program
    num_binaries_solved: int  # left after reduced-cost fixing, given to the MIP solver
    solve_seconds: float  # HiGHS wall time, LP relaxation and MIP (model building excluded)


# ------------------------------------------------------------------------------ options


@lru_cache(maxsize=1024)
def _pareto_allocs(scenario: Scenario, type_index: int, work: float,
                   capacity: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Non-dominated (allocation [m, R], duration [m]) of a task type on a node capacity."""
    st = static_tables(scenario)
    rng = alloc_range(scenario, type_index, np.asarray(capacity))
    R = st.type_min.shape[1]
    if rng is None:
        return np.zeros((0, R), dtype=np.int64), np.zeros(0, dtype=np.int64)
    low, high = rng
    table = slot_table(scenario, work)[type_index]
    cs = np.arange(low[st.cpu], high[st.cpu] + 1)
    gs = np.arange(low[st.gpu], high[st.gpu] + 1)
    cc, gg = np.meshgrid(cs, gs, indexing="ij")
    cc, gg = cc.ravel(), gg.ravel()
    dur = table[cc, gg]
    # Resources other than cpu and gpu do not speed a task up: only their minimum is useful.
    alloc = np.tile(low, (cc.size, 1))
    alloc[:, st.cpu], alloc[:, st.gpu] = cc, gg
    ok = dur < NEVER
    alloc, dur = alloc[ok], dur[ok]
    # j dominates i: no more of any resource and no more slots (allocations are distinct).
    le = (alloc[None, :, :] <= alloc[:, None, :]).all(axis=2) & (dur[None, :] <= dur[:, None])
    np.fill_diagonal(le, False)
    keep = ~le.any(axis=1)
    alloc, dur = alloc[keep], dur[keep]
    alloc.setflags(write=False)  # cached and shared by every call
    dur.setflags(write=False)
    return alloc, dur


@dataclass
class _Option:
    node: int
    cluster: int
    alloc: np.ndarray
    duration: int


def _task_options(scenario: Scenario, workload: Workload) -> list[list[_Option]]:
    st = static_tables(scenario)
    out: list[list[_Option]] = []
    for t in range(workload.num_tasks):
        opts = []
        for n in np.flatnonzero(workload.visible[t, st.node_cluster]):
            allocs, durs = _pareto_allocs(scenario, int(workload.task_type[t]), float(workload.work[t]),
                                          tuple(int(x) for x in st.node_capacity[n]))
            opts += [_Option(int(n), int(st.node_cluster[n]), a, int(d)) for a, d in zip(allocs, durs)]
        out.append(opts)
    return out


# ------------------------------------------------------------------------------ list schedule


def _list_schedule(scenario: Scenario, workload: Workload, options: list[list[_Option]],
                   order: np.ndarray) -> tuple[int, list[tuple[_Option, int]]]:
    """Greedy: in `order`, each task takes the option that finishes earliest given the tasks
    placed before it (ties: fewer resources). Returns (total JCT, [(option, start)] per task)."""
    st = static_tables(scenario)
    arr = workload.arrival_slot
    # Makespan bound of any such schedule: each task can at worst wait for all earlier ones.
    H = int(arr.max()) + sum(min(o.duration for o in opts) for opts in options) + 1
    used = np.zeros((st.node_capacity.shape[0], H, st.type_min.shape[1]), dtype=np.int64)
    running = np.zeros((scenario.num_clusters, H), dtype=np.int64)
    chosen: list[tuple[_Option, int] | None] = [None] * workload.num_tasks
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


def _best_list_schedule(scenario: Scenario, workload: Workload, options: list[list[_Option]],
                        lb: np.ndarray, tries: int = 12) -> tuple[int, list[tuple[_Option, int]]]:
    T = workload.num_tasks
    arr = workload.arrival_slot
    orders = [np.lexsort((np.arange(T), arr)), np.lexsort((lb, arr)), np.lexsort((-lb, arr))]
    rng = np.random.default_rng(0)  # fixed: the horizon must not depend on global state
    orders += [np.lexsort((rng.random(T), arr)) for _ in range(tries)]
    return min((_list_schedule(scenario, workload, options, o) for o in orders), key=lambda r: r[0])


def _capacity_rows(st: StaticTables, num_clusters: int, T: int, vt: np.ndarray, vs: np.ndarray,
                   vd: np.ndarray, vn: np.ndarray, vc: np.ndarray, va: np.ndarray,
                   H: int) -> tuple[csr_matrix, np.ndarray]:
    """Sparse rows `A x <= b` of node capacity (node, resource, slot) and cluster running count
    (cluster, slot) for the binaries given, leaving out rows that can never bind."""
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


# ------------------------------------------------------------------------------ the program


def optimal(scenario: Scenario, workload: Workload, time_limit: float = DEFAULT_TIME_LIMIT,
            max_tasks: int = MAX_TASKS, max_binaries: int = MAX_BINARIES,
            verbose: bool = False, lp_fixing: bool = True) -> OptimalSchedule:
    """The minimum average JCT over all non-preemptive schedules of `workload` (see the module
    docstring for what is modelled), with one schedule that attains it.

    Raises InstanceTooLargeError beyond `max_tasks` tasks or `max_binaries` binary variables,
    and OptimumNotFoundError if HiGHS cannot prove optimality within `time_limit` seconds.
    `verbose` prints HiGHS' log; `lp_fixing=False` solves the program over all binaries at once
    (slower; for cross-checking the reduced-cost fixing).
    """
    st = static_tables(scenario)
    T = workload.num_tasks
    if T > max_tasks:
        raise InstanceTooLargeError(
            f"optimal(): the episode has {T} tasks, the exact integer program is limited to "
            f"{max_tasks} tasks and {max_binaries} binary variables. Fix: use fewer tasks "
            f"(arrivals.tasks, e.g. small_scenario()), or tapfinger.evaluation.bounds.lower_bound for large episodes.")
    if T == 0:
        raise ValueError("optimal(): the workload has no tasks")
    lb, lb_mean = lower_bound(scenario, workload)
    if np.any(lb >= NEVER):
        bad = int(np.flatnonzero(lb >= NEVER)[0])
        raise ValueError(f"optimal(): task {bad} fits on no node of the clusters that see it, so no "
                         f"schedule finishes it")
    options = _task_options(scenario, workload)
    list_total, list_chosen = _best_list_schedule(scenario, workload, options, lb)
    slack = list_total - int(lb.sum())

    # Enumerate the binaries: (task, option, start) with start + d <= arrival + lb + slack.
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
            starts = np.arange(int(arr[t]), int(arr[t]) + n_starts)
            var_task.append(np.full(n_starts, t))
            var_start.append(starts)
            var_dur.append(np.full(n_starts, o.duration))
            var_node.append(np.full(n_starts, o.node))
            var_cluster.append(np.full(n_starts, o.cluster))
            var_alloc.append(np.tile(o.alloc, (n_starts, 1)))
    vt, vs, vd = np.concatenate(var_task), np.concatenate(var_start), np.concatenate(var_dur)
    vn, vc, va = np.concatenate(var_node), np.concatenate(var_cluster), np.concatenate(var_alloc)
    V_full = vt.size
    H = int((vs + vd).max())
    cost = (vs - arr[vt] + vd).astype(np.float64)

    # Reduced-cost fixing: with the LP relaxation's value L and the reduced cost d_j >= 0 of a
    # binary at 0, every schedule that uses j has a total JCT of at least L + d_j. So the
    # program restricted to {j : d_j <= tau} holds every schedule of total <= L + tau. Start
    # with a small tau; once a restriction holds every schedule that could beat the best one
    # known (total <= best - 1, JCT being integral), the best one is optimal; else widen tau
    # to best - 1 - L and solve again. The LP bound is close to the optimum on these instances,
    # so this drops most binaries and most of HiGHS' time.
    t0 = time.perf_counter()
    A_eq = coo_matrix((np.ones(V_full), (vt, np.arange(V_full))), shape=(T, V_full)).tocsr()
    A_ub, b_ub = _capacity_rows(st, scenario.num_clusters, T, vt, vs, vd, vn, vc, va, H)
    lp = linprog(cost, A_ub=A_ub if A_ub.shape[0] else None, b_ub=b_ub if A_ub.shape[0] else None,
                 A_eq=A_eq, b_eq=np.ones(T), bounds=(0, 1), method="highs")
    if lp.status == 0:
        L, reduced = float(lp.fun), np.asarray(lp.lower.marginals)
    else:  # no LP information (should not happen): solve the whole program
        L, reduced = float(lb.sum()), np.zeros(V_full)
    if not lp_fixing:  # one program over every binary (a cross-check of the fixing)
        reduced = np.zeros(V_full)
    # Better than a known total J means a total <= J - 1 (JCT is integral). The list schedule is
    # the first known one.
    best_total, best = list_total, None  # best: (binaries picked) of a schedule beating the list
    tau = min(best_total - 1 - L, np.ceil(L - 1e-6) - L + INITIAL_GAP) if lp_fixing else max(best_total - 1 - L, 0.0)
    solved = 0
    while tau >= -_RC_TOL:  # else nothing can beat best_total: L > best_total - 1
        sub = np.flatnonzero(reduced <= tau + _RC_TOL)
        A_sub, b_sub = _capacity_rows(st, scenario.num_clusters, T, vt[sub], vs[sub], vd[sub], vn[sub],
                                      vc[sub], va[sub], H)
        V = solved = sub.size
        constraints = [LinearConstraint(coo_matrix((np.ones(V), (vt[sub], np.arange(V))), shape=(T, V)).tocsr(), 1, 1)]
        if A_sub.shape[0]:
            constraints.append(LinearConstraint(A_sub, -np.inf, b_sub))
        # JCT is integral, so an absolute gap below 1 proves optimality.
        left = max(time_limit - (time.perf_counter() - t0), 1.0)
        res = milp(cost[sub], constraints=constraints, integrality=np.ones(V), bounds=Bounds(0, 1),
                   options={"disp": bool(verbose), "time_limit": float(left),
                            "mip_rel_gap": min(1e-4, 0.5 / max(list_total, 1))})
        if verbose:
            print(f"optimal(): {tau:.2f} above the LP bound {L:.2f}: {V} binaries, HiGHS status "
                  f"{res.status}, total {res.fun}, {time.perf_counter() - t0:.2f} s")
        if res.status == 0 and res.x is not None:
            if res.fun < best_total - 0.5:
                best_total, best = int(round(res.fun)), sub[np.flatnonzero(res.x > 0.5)]
        elif res.status != 2:  # 2 = infeasible: nothing in this restriction
            raise OptimumNotFoundError(
                f"optimal(): HiGHS did not prove an optimum ({res.message}; status {res.status}) for "
                f"{T} tasks and {V} binaries in {time.perf_counter() - t0:.1f} s. Fix: raise "
                f"time_limit or use a smaller instance.")
        # Every schedule better than best_total uses only binaries with d_j <= best_total - 1 - L;
        # if they were all in this restriction, none exists.
        if tau >= best_total - 1 - L - _RC_TOL:
            break
        tau = best_total - 1 - L
    solve_seconds = time.perf_counter() - t0

    if best is None:  # nothing beats the list schedule: it is optimal
        chosen = list_chosen
        start = np.asarray([s for _, s in chosen], dtype=np.int64)
        dur = np.asarray([o.duration for o, _ in chosen], dtype=np.int64)
        node = np.asarray([o.node for o, _ in chosen], dtype=np.int64)
        cluster = np.asarray([o.cluster for o, _ in chosen], dtype=np.int64)
        alloc = np.asarray([o.alloc for o, _ in chosen], dtype=np.int64).reshape(T, -1)
    else:
        if best.size != T or np.unique(vt[best]).size != T:
            raise OptimumNotFoundError(f"optimal(): HiGHS returned a non-integral assignment "
                                       f"({best.size} options picked for {T} tasks)")
        pick = best[np.argsort(vt[best])]
        start, dur, node, cluster, alloc = (vs[pick].astype(np.int64), vd[pick].astype(np.int64),
                                            vn[pick].astype(np.int64), vc[pick].astype(np.int64),
                                            va[pick].astype(np.int64))
    jct = start - arr + dur
    total = int(jct.sum())
    if total != best_total or total < L - 1e-6:
        raise OptimumNotFoundError(f"optimal(): inconsistent solution (sum of JCT {total}, expected "
                                   f"{best_total}, LP bound {L}, list schedule {list_total})")
    return OptimalSchedule(
        avg_jct=total / T, jct=jct, start=start, duration=dur, cluster=cluster, node=node, alloc=alloc,
        lower_bound=lb_mean, lp_bound=L / T, list_avg_jct=list_total / T, horizon=H,
        num_binaries=V_full, num_binaries_solved=solved, solve_seconds=solve_seconds)


def optimal_avg_jct(scenario: Scenario, seed: int, time_limit: float = DEFAULT_TIME_LIMIT) -> float:
    """The optimal non-preemptive average JCT of the episode `seed` (same arrivals as run_episode)."""
    return optimal(scenario, make_workload(scenario, seed), time_limit=time_limit).avg_jct


# ------------------------------------------------------------------------------ checking


def check_schedule(scenario: Scenario, workload: Workload, sched: OptimalSchedule) -> None:
    """Raise AssertionError unless `sched` respects every constraint of the model."""
    st = static_tables(scenario)
    T = workload.num_tasks
    H = int((sched.start + sched.duration).max())
    used = np.zeros((st.node_capacity.shape[0], H, st.type_min.shape[1]), dtype=np.int64)
    running = np.zeros((scenario.num_clusters, H), dtype=np.int64)
    for t in range(T):
        k, n, a = int(workload.task_type[t]), int(sched.node[t]), sched.alloc[t]
        assert workload.visible[t, st.node_cluster[n]], f"task {t} placed on a cluster that does not see it"
        assert st.node_cluster[n] == sched.cluster[t]
        assert sched.start[t] >= workload.arrival_slot[t], f"task {t} starts before it arrives"
        assert np.all(a >= st.type_min[k]) and np.all(a <= st.grid_max), f"task {t}: allocation {a} out of range"
        d = slot_table(scenario, float(workload.work[t]))[k, a[st.cpu], a[st.gpu]]
        assert d == sched.duration[t], f"task {t}: duration {sched.duration[t]}, the engine needs {d}"
        assert sched.jct[t] == sched.start[t] - workload.arrival_slot[t] + d
        used[n, sched.start[t]: sched.start[t] + d] += a
        running[sched.cluster[t], sched.start[t]: sched.start[t] + d] += 1
    assert np.all(used <= st.node_capacity[:, None, :]), "a node's capacity is exceeded"
    assert np.all(running <= st.max_running[:, None]), "a cluster runs more than max_running tasks"


class WindowOverflowError(RuntimeError):
    """A scheduled task is not in its cluster's pending window at its start slot."""


def replay_schedule(scenario: Scenario, workload: Workload, sched: OptimalSchedule) -> dict[str, np.ndarray]:
    """Play `sched` in the engine (strict mode) and return its task records.

    Raises WindowOverflowError if a task is not in its cluster's window when it should start:
    then the optimum is not reachable in the environment and is only a lower bound.
    """
    eng = Engine(scenario, strict=True)
    eng.reset(0, workload=workload)
    st = eng.static
    todo = {int(s): list(np.flatnonzero(sched.start == s)) for s in np.unique(sched.start)}
    while not eng.done:
        pending = list(todo.pop(eng.slot, []))
        while True:
            task, node, alloc = (np.full(eng.N, -1, dtype=np.int64), np.zeros(eng.N, dtype=np.int64),
                                 np.zeros((eng.N, eng.R), dtype=np.int64))
            for t in list(pending):
                c = int(sched.cluster[t])
                if task[c] >= 0:
                    continue  # one start per agent per round; the rest in later rounds
                place = np.flatnonzero(eng.window[c] == t)
                if not place.size:
                    raise WindowOverflowError(f"task {t} is not in cluster {c}'s window at slot {eng.slot}")
                task[c] = int(place[0])
                node[c] = int(np.flatnonzero(st.cluster_nodes[c] == sched.node[t])[0])
                alloc[c] = sched.alloc[t]
                pending.remove(t)
            if eng.play_round(task, node, alloc):
                break
        if eng.slot > int((sched.start + sched.duration).max()) + 1 and not eng.done:
            raise RuntimeError("replay did not finish within the schedule's horizon")
    return eng.task_records()


# ------------------------------------------------------------------------------ instances


def small_scenario(num_clusters: int = 3, seed: int = 0, tasks: int = 12, rate: float = 2.0,
                   cpu_range: tuple[int, int] = (4, 8), gpu_range: tuple[int, int] = (4, 8),
                   grid_max: tuple[int, int] = (8, 8)) -> Scenario:
    """A small synthetic-3-like scenario (IMG and LM tasks) for exact optima: `num_clusters`
    one-node clusters of random size in cpu_range x gpu_range (inclusive), drawn from `seed`."""
    base = load_scenario("synthetic-3")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A11]))
    cpu = base.resource_index("cpu")
    clusters = []
    for i in range(num_clusters):
        c = int(rng.integers(cpu_range[0], cpu_range[1] + 1))
        g = int(rng.integers(gpu_range[0], gpu_range[1] + 1))
        clusters.append(Cluster(f"c{i}", ((c, g) if cpu == 0 else (g, c),)))
    grid = tuple(grid_max) if cpu == 0 else tuple(reversed(grid_max))
    return dataclasses.replace(
        base, name=f"small-{num_clusters}-{seed}", description="small random instance for exact optima",
        clusters=tuple(clusters), grid_max=grid,
        arrivals=dataclasses.replace(base.arrivals, tasks=tasks, rate=rate))
