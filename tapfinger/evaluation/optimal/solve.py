"""`optimal`: enumerate the program's binaries, fix most of them by reduced costs, solve the
rest with HiGHS (see the package docstring for what is modelled)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from tapfinger.evaluation.bounds import lower_bound
from tapfinger.evaluation.optimal.model import (Binaries, InstanceTooLargeError, Option, assignment_rows,
                                                best_list_schedule, capacity_rows, enumerate_binaries, task_options)
from tapfinger.sim.progress import NEVER
from tapfinger.sim.scenario import Scenario
from tapfinger.sim.tables import StaticTables, static_tables
from tapfinger.sim.workload import Workload, make_workload

# Limits of `optimal`: beyond them HiGHS may take minutes to hours; use `lower_bound` instead.
MAX_TASKS = 20
MAX_BINARIES = 60_000
DEFAULT_TIME_LIMIT = 300.0  # seconds given to HiGHS before giving up
# First restriction of reduced-cost fixing: schedules within this many JCT slots of the LP bound.
INITIAL_GAP = 3.0
_RC_TOL = 1e-3  # slack on reduced costs: keeping a few more binaries is always safe
# scipy's result codes: `linprog` and `milp` status 0 = solved to optimality, `milp` 2 = infeasible.
SOLVED = 0
INFEASIBLE = 2

__all__ = ["DEFAULT_TIME_LIMIT", "INITIAL_GAP", "MAX_BINARIES", "MAX_TASKS", "InstanceTooLargeError",
           "OptimalSchedule", "OptimumNotFoundError", "optimal", "optimal_avg_jct"]


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


@dataclass(frozen=True)
class _Program:
    """The time-indexed program of one episode: its binaries, their costs and the tables."""

    st: StaticTables
    num_clusters: int
    T: int
    binaries: Binaries
    cost: np.ndarray  # [V] JCT of each binary
    horizon: int  # slots modelled (capacity rows are numbered over the full horizon)
    list_total: int  # total JCT of the list schedule, the first known schedule


# ------------------------------------------------------------------------------ the steps


def _checked_lower_bounds(scenario: Scenario, workload: Workload, max_tasks: int, max_binaries: int) -> tuple[np.ndarray, float]:
    """The per-task lower bounds and their mean, after refusing instances `optimal` cannot solve."""
    T = workload.num_tasks
    if T > max_tasks:
        raise InstanceTooLargeError(
            f"optimal(): the episode has {T} tasks, the exact integer program is limited to "
            f"{max_tasks} tasks and {max_binaries} binary variables. Fix: use fewer tasks "
            f"(arrivals.tasks, e.g. small_scenario()), or tapfinger.evaluation.bounds.lower_bound for large episodes.")
    if T == 0:
        raise ValueError("optimal(): the workload has no tasks")
    tiers = [what for what, on in (("capacity schedules", scenario.capacity_varies),
                                   ("edge speeds", any(t.edge_speed != 1.0 for t in scenario.task_types)),
                                   ("restart or migration costs", scenario.restart_seconds or scenario.migration_seconds),
                                   ("declines", scenario.allow_decline)) if on]
    if tiers:
        # the integer program models fixed capacities, one speed per type, and no admission control
        raise ValueError(f"optimal(): scenario {scenario.name} has {', '.join(tiers)}, which the exact integer "
                         f"program does not model, so its answer would not be the optimum. Fix: use a scenario "
                         f"without them, or tapfinger.evaluation.bounds.lower_bound (a bound that still holds)")
    lb, lb_mean = lower_bound(scenario, workload)
    if np.any(lb >= NEVER):
        bad = int(np.flatnonzero(lb >= NEVER)[0])
        raise ValueError(f"optimal(): task {bad} fits on no node of the clusters that see it, so no "
                         f"schedule finishes it")
    return lb, lb_mean


def lp_relaxation(prog: _Program, fallback: float) -> tuple[float, np.ndarray]:
    """The LP relaxation's value L and the reduced cost of every binary (at 0); without LP
    information (should not happen) `fallback` and zeros, which fix nothing."""
    V = prog.binaries.size
    A_ub, b_ub = capacity_rows(prog.st, prog.num_clusters, prog.T, prog.binaries, prog.horizon)
    lp = linprog(prog.cost, A_ub=A_ub if A_ub.shape[0] else None, b_ub=b_ub if A_ub.shape[0] else None,
                 A_eq=assignment_rows(prog.binaries, prog.T), b_eq=np.ones(prog.T), bounds=(0, 1), method="highs")
    if lp.status == SOLVED:
        return float(lp.fun), np.asarray(lp.lower.marginals)
    return fallback, np.zeros(V)


def solve_restricted(prog: _Program, sub: np.ndarray, time_left: float, verbose: bool):
    """HiGHS' MIP over the binaries `sub` only (the others fixed at 0); scipy's result."""
    b = prog.binaries.subset(sub)
    A_sub, b_sub = capacity_rows(prog.st, prog.num_clusters, prog.T, b, prog.horizon)
    constraints = [LinearConstraint(assignment_rows(b, prog.T), 1, 1)]
    if A_sub.shape[0]:
        constraints.append(LinearConstraint(A_sub, -np.inf, b_sub))
    # JCT is integral, so an absolute gap below 1 proves optimality.
    return milp(prog.cost[sub], constraints=constraints, integrality=np.ones(sub.size), bounds=Bounds(0, 1),
                options={"disp": bool(verbose), "time_limit": float(time_left),
                         "mip_rel_gap": min(1e-4, 0.5 / max(prog.list_total, 1))})


def solve_with_fixing(prog: _Program, L: float, reduced: np.ndarray, lp_fixing: bool, time_limit: float,
                      t0: float, verbose: bool) -> tuple[int, np.ndarray | None, int]:
    """Reduced-cost fixing: (best total JCT, binaries picked or None if the list schedule is
    optimal, binaries given to the last MIP).

    With the LP relaxation's value L and the reduced cost d_j >= 0 of a binary at 0, every
    schedule that uses j has a total JCT of at least L + d_j. So the program restricted to
    {j : d_j <= tau} holds every schedule of total <= L + tau. Start with a small tau; once a
    restriction holds every schedule that could beat the best one known (total <= best - 1,
    JCT being integral), the best one is optimal; else widen tau to best - 1 - L and solve
    again. The LP bound is close to the optimum on these instances, so this drops most
    binaries and most of HiGHS' time.
    """
    # Better than a known total J means a total <= J - 1 (JCT is integral). The list schedule is
    # the first known one.
    best_total, best = prog.list_total, None
    tau = (min(best_total - 1 - L, np.ceil(L - 1e-6) - L + INITIAL_GAP) if lp_fixing
           else max(best_total - 1 - L, 0.0))
    solved = 0
    while tau >= -_RC_TOL:  # else nothing can beat best_total: L > best_total - 1
        sub = np.flatnonzero(reduced <= tau + _RC_TOL)
        solved = sub.size
        res = solve_restricted(prog, sub, max(time_limit - (time.perf_counter() - t0), 1.0), verbose)
        if verbose:
            print(f"optimal(): {tau:.2f} above the LP bound {L:.2f}: {sub.size} binaries, HiGHS status "
                  f"{res.status}, total {res.fun}, {time.perf_counter() - t0:.2f} s")
        if res.status == SOLVED and res.x is not None:
            if res.fun < best_total - 0.5:
                best_total, best = int(round(res.fun)), sub[np.flatnonzero(res.x > 0.5)]
        elif res.status != INFEASIBLE:  # infeasible: nothing in this restriction
            raise OptimumNotFoundError(
                f"optimal(): HiGHS did not prove an optimum ({res.message}; status {res.status}) for "
                f"{prog.T} tasks and {sub.size} binaries in {time.perf_counter() - t0:.1f} s. Fix: raise "
                f"time_limit or use a smaller instance.")
        # Every schedule better than best_total uses only binaries with d_j <= best_total - 1 - L;
        # if they were all in this restriction, none exists.
        if tau >= best_total - 1 - L - _RC_TOL:
            break
        tau = best_total - 1 - L
    return best_total, best, solved


def _chosen(prog: _Program, best: np.ndarray | None,
            list_chosen: list[tuple[Option, int]]) -> tuple[np.ndarray, ...]:
    """(start, duration, node, cluster, alloc) per task of the picked binaries, or of the list
    schedule when nothing beat it."""
    T = prog.T
    if best is None:
        start = np.asarray([s for _, s in list_chosen], dtype=np.int64)
        dur = np.asarray([o.duration for o, _ in list_chosen], dtype=np.int64)
        node = np.asarray([o.node for o, _ in list_chosen], dtype=np.int64)
        cluster = np.asarray([o.cluster for o, _ in list_chosen], dtype=np.int64)
        alloc = np.asarray([o.alloc for o, _ in list_chosen], dtype=np.int64).reshape(T, -1)
        return start, dur, node, cluster, alloc
    b = prog.binaries
    if best.size != T or np.unique(b.task[best]).size != T:
        raise OptimumNotFoundError(f"optimal(): HiGHS returned a non-integral assignment "
                                   f"({best.size} options picked for {T} tasks)")
    pick = best[np.argsort(b.task[best])]
    return (b.start[pick].astype(np.int64), b.duration[pick].astype(np.int64), b.node[pick].astype(np.int64),
            b.cluster[pick].astype(np.int64), b.alloc[pick].astype(np.int64))


# ------------------------------------------------------------------------------ the optimum


def optimal(scenario: Scenario, workload: Workload, time_limit: float = DEFAULT_TIME_LIMIT,
            max_tasks: int = MAX_TASKS, max_binaries: int = MAX_BINARIES,
            verbose: bool = False, lp_fixing: bool = True) -> OptimalSchedule:
    """The minimum average JCT over all non-preemptive schedules of `workload` (see the package
    docstring for what is modelled), with one schedule that attains it.

    Raises InstanceTooLargeError beyond `max_tasks` tasks or `max_binaries` binary variables,
    and OptimumNotFoundError if HiGHS cannot prove optimality within `time_limit` seconds.
    `verbose` prints HiGHS' log; `lp_fixing=False` solves the program over all binaries at once
    (slower; for cross-checking the reduced-cost fixing).
    """
    lb, lb_mean = _checked_lower_bounds(scenario, workload, max_tasks, max_binaries)
    T = workload.num_tasks
    options = task_options(scenario, workload)
    list_total, list_chosen = best_list_schedule(scenario, workload, options, lb)
    binaries = enumerate_binaries(workload, options, lb, list_total - int(lb.sum()), max_tasks, max_binaries)
    arr = workload.arrival_slot.astype(np.int64)
    prog = _Program(static_tables(scenario), scenario.num_clusters, T, binaries, binaries.cost(arr),
                    binaries.horizon, list_total)

    t0 = time.perf_counter()
    L, reduced = lp_relaxation(prog, fallback=float(lb.sum()))
    if not lp_fixing:  # one program over every binary (a cross-check of the fixing)
        reduced = np.zeros(binaries.size)
    best_total, best, solved = solve_with_fixing(prog, L, reduced, lp_fixing, time_limit, t0, verbose)
    solve_seconds = time.perf_counter() - t0

    start, dur, node, cluster, alloc = _chosen(prog, best, list_chosen)
    jct = start - arr + dur
    total = int(jct.sum())
    if total != best_total or total < L - 1e-6:
        raise OptimumNotFoundError(f"optimal(): inconsistent solution (sum of JCT {total}, expected "
                                   f"{best_total}, LP bound {L}, list schedule {list_total})")
    return OptimalSchedule(
        avg_jct=total / T, jct=jct, start=start, duration=dur, cluster=cluster, node=node, alloc=alloc,
        lower_bound=lb_mean, lp_bound=L / T, list_avg_jct=list_total / T, horizon=prog.horizon,
        num_binaries=binaries.size, num_binaries_solved=solved, solve_seconds=solve_seconds)


def optimal_avg_jct(scenario: Scenario, seed: int, time_limit: float = DEFAULT_TIME_LIMIT) -> float:
    """The optimal non-preemptive average JCT of the episode `seed` (same arrivals as run_episode)."""
    return optimal(scenario, make_workload(scenario, seed), time_limit=time_limit).avg_jct
