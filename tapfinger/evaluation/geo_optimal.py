"""The exact offline optimum of small geo episodes, by a time-indexed integer program (HiGHS).

The program (`geo_optimal_model`) keeps, per job, site and slot, the engine's own state: the
passes left of the blocks present at the site. That one number is the whole state because a site
trains a job's blocks one after another, so the untouched blocks, the only ones that may move,
are `passes_left // epochs`, and "e * blocks moved <= passes left" says exactly that. Training is
the engine's z = min(p x, P - e out), not just at most it (a binary per job, site and slot picks
which bound binds): a program that could train less than the workers do would be a relaxation,
free to keep a block untouched for a later move that the engine would have trained. Moves
arrive at the end of the slot, the latency cost is f(JCT) through monotone completion binaries,
and jobs unfinished at max_slots pay f(max_slots - a), as in the engine. So every solution is a
sequence of `GeoDecision`s the engine accepts, at the same cost, and back: the optimum is the
engine's optimum over all schedules, clairvoyant ones included (`docs/geo-optimum.md`).

`geo_optimal(scenario, jobs)` solves it; `replay_geo_optimum` plays the decisions in a
`GeoEngine` (the check of exactness: every decision accepted, the same total cost).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from tapfinger.evaluation.geo_optimal_model import GeoProgram, build_program, count_variables
from tapfinger.sim.geo.engine import NO_SITE, GeoDecision, GeoEngine
from tapfinger.sim.geo.model import GeoJob, GeoScenario

# Beyond this many variables HiGHS may take minutes to hours. The default small instance (3 sites,
# 3 jobs, 16 slots) has about 1,500 and solves in 0.05-28 s (median 0.5 s); 4 jobs (about 2,000)
# already take up to 40 s; 4 sites and 3 jobs (about 2,300) up to 6 s.
MAX_VARIABLES = 4_000
DEFAULT_TIME_LIMIT = 120.0  # seconds given to HiGHS before giving up
MIP_REL_GAP = 1e-7  # the costs are real numbers: ask HiGHS for a gap far below any policy's distance
SOLVED = 0  # scipy's milp status: optimal


class GeoInstanceTooLargeError(ValueError):
    """The instance needs more variables than the exact program is allowed (MAX_VARIABLES)."""


class GeoOptimumNotFoundError(RuntimeError):
    """HiGHS stopped (time limit, or infeasibility, which would be a bug) without a proof."""


@dataclass(frozen=True)
class GeoOptimum:
    """An optimal schedule of one geo episode and its cost."""

    cost: float  # the program's objective: the engine's total cost of `decisions`
    latency_cost: float
    transfer_cost: float
    exchange_cost: float
    decisions: tuple[GeoDecision, ...]  # one per slot, until every job completed (or max_slots)
    passes_left: np.ndarray  # [slots + 1, J, R] at the start of each slot (the last: after the last)
    completion: np.ndarray  # [J] slot each job completes at the end of, -1 if unfinished
    dual_bound: float  # HiGHS' proven lower bound on the cost
    num_variables: int
    num_integers: int
    num_rows: int
    solve_seconds: float  # HiGHS' wall time (building the program excluded)


def check_size(scenario: GeoScenario, jobs: tuple[GeoJob, ...], max_variables: int = MAX_VARIABLES) -> int:
    """The program's variable count; GeoInstanceTooLargeError above `max_variables`."""
    count = count_variables(scenario, jobs)
    if count > max_variables:
        raise GeoInstanceTooLargeError(
            f"geo_optimal(): {len(jobs)} jobs on {scenario.num_sites} sites over {scenario.max_slots} slots need "
            f"{count} variables, above the limit MAX_VARIABLES = {max_variables} (variables grow as jobs x slots "
            f"x sites^2). Fix: fewer jobs or sites, or a shorter max_slots (e.g. "
            f"tapfinger.evaluation.geo_instances.small_geo_scenario), or pass max_variables= if you accept "
            f"long solves.")
    return count


def _solve(prog: GeoProgram, time_limit: float, verbose: bool):
    lb, ub, integrality = prog.cols.arrays()
    A, rlo, rhi = prog.rows.matrix(prog.cols.size)
    return milp(prog.objective, constraints=[LinearConstraint(A, rlo, rhi)], integrality=integrality,
                bounds=Bounds(lb, ub), options={"disp": bool(verbose), "time_limit": float(time_limit),
                                                "mip_rel_gap": MIP_REL_GAP})


def _values(prog: GeoProgram, sol: np.ndarray, H: int, R: int) -> dict[str, np.ndarray]:
    """Per job, the solution as integer arrays over absolute slots (before its arrival: no
    decision, and its data as it arrives, which is what the engine holds)."""
    J = len(prog.jobs)
    out = {"P": np.zeros((H + 1, J, R), np.int64), "x": np.zeros((H, J, R), np.int64),
           "y": np.zeros((H, J, R), np.int64), "n": np.zeros((H, J, R, R), np.int64)}
    for i, jc in enumerate(prog.jobs):
        for key, arr in out.items():
            vals = sol[getattr(jc, key)]
            arr[jc.arrival: jc.arrival + vals.shape[0], i] = vals.astype(np.int64)
        out["P"][: jc.arrival, i] = out["P"][jc.arrival, i]
    return out


def _decisions(vals: dict[str, np.ndarray], arrival: np.ndarray) -> tuple[list[GeoDecision], np.ndarray]:
    """The per-slot decisions of a solution, up to the slot the last job completes; and the
    completion slot of each job (-1 if it does not complete)."""
    P, x, y, n = vals["P"], vals["x"], vals["y"], vals["n"]
    H, J = x.shape[0], x.shape[1]
    left = P[1:].sum(axis=2)  # [H, J] passes left at the end of each slot
    done = (left == 0) & (np.arange(H)[:, None] >= arrival[None])
    completion = np.where(done.any(axis=0), np.argmax(done, axis=0), -1)
    last = H - 1 if np.any(completion < 0) else int(completion.max())
    decisions = []
    for t in range(last + 1):
        live = [i for i in range(J) if arrival[i] <= t and (completion[i] < 0 or completion[i] >= t)]
        placements = {}
        for i in live:
            if y[t, i].any() or x[t, i].any():
                placements[i] = (int(np.argmax(y[t, i])) if y[t, i].any() else NO_SITE, x[t, i].copy())
        moves = tuple((i, int(r), int(s), int(n[t, i, r, s])) for i in live for r, s in zip(*np.nonzero(n[t, i])))
        decisions.append(GeoDecision(placements=placements, moves=moves))
    return decisions, completion


def _integral(res) -> np.ndarray:
    """HiGHS' solution rounded. Every variable is integral by the program's logic (see
    geo_optimal_model): rounding drops HiGHS' feasibility tolerance, so the costs computed from it
    are the engine's to rounding error."""
    raw = np.asarray(res.x)
    sol = np.rint(raw)
    if np.max(np.abs(raw - sol)) > 1e-4:
        worst = int(np.argmax(np.abs(raw - sol)))
        raise GeoOptimumNotFoundError(f"geo_optimal(): HiGHS returned a fractional value {raw[worst]} for "
                                      f"variable {worst}, which the program makes integral (a bug)")
    return sol


def _cost_parts(prog: GeoProgram, sol: np.ndarray) -> tuple[float, float, float]:
    """(latency, transfer, exchange) of a solution, from the objective's own terms."""
    transfer = sum(float(prog.objective[jc.n].ravel() @ sol[jc.n].ravel()) for jc in prog.jobs)
    exchange = sum(float(prog.objective[jc.v].ravel() @ sol[jc.v].ravel()) for jc in prog.jobs)
    latency = prog.constant + sum(float(prog.objective[jc.c] @ sol[jc.c]) for jc in prog.jobs)
    return latency, transfer, exchange


def geo_optimal(scenario: GeoScenario, jobs: tuple[GeoJob, ...], time_limit: float = DEFAULT_TIME_LIMIT,
                max_variables: int = MAX_VARIABLES, verbose: bool = False) -> GeoOptimum:
    """The minimum total cost (latency + transfer + exchange) of the episode `jobs`, over every
    schedule, with one schedule that attains it (see the module docstring).

    Raises GeoInstanceTooLargeError above `max_variables` variables (counted before anything is
    built) and GeoOptimumNotFoundError if HiGHS proves no optimum within `time_limit` seconds."""
    jobs = tuple(jobs)
    if not jobs:
        raise ValueError("geo_optimal(): the episode has no jobs")
    if any(j.arrival >= scenario.max_slots for j in jobs):
        raise ValueError(f"geo_optimal(): a job arrives at or after max_slots {scenario.max_slots}. "
                         f"Fix: raise max_slots or drop the job")
    check_size(scenario, jobs, max_variables)
    prog = build_program(scenario, jobs)
    t0 = time.perf_counter()
    res = _solve(prog, time_limit, verbose)
    seconds = time.perf_counter() - t0
    if res.status != SOLVED or res.x is None:
        raise GeoOptimumNotFoundError(
            f"geo_optimal(): HiGHS proved no optimum ({res.message}; status {res.status}) for {len(jobs)} jobs, "
            f"{prog.cols.size} variables, in {seconds:.1f} s. Fix: raise time_limit or use a smaller instance.")
    sol = _integral(res)
    vals = _values(prog, sol, scenario.max_slots, scenario.num_sites)
    arrival = np.array([j.arrival for j in jobs], dtype=np.int64)
    decisions, completion = _decisions(vals, arrival)
    latency, transfer, exchange = _cost_parts(prog, sol)
    _, _, integrality = prog.cols.arrays()
    bound = getattr(res, "mip_dual_bound", None)
    return GeoOptimum(
        cost=float(prog.objective @ sol) + prog.constant, latency_cost=latency, transfer_cost=transfer,
        exchange_cost=exchange,
        decisions=tuple(decisions), passes_left=vals["P"][: len(decisions) + 1], completion=completion,
        dual_bound=float(bound) + prog.constant if bound is not None else float("nan"),
        num_variables=prog.cols.size, num_integers=int(integrality.sum()), num_rows=prog.rows.count,
        solve_seconds=seconds)


def replay_geo_optimum(scenario: GeoScenario, jobs: tuple[GeoJob, ...], opt: GeoOptimum,
                       check_state: bool = True) -> GeoEngine:
    """Play `opt.decisions` in a fresh GeoEngine and return it (finished). The engine raises
    GeoActionError on a decision it refuses; with `check_state`, an AssertionError names the
    first slot whose passes left differ from the program's."""
    eng = GeoEngine(scenario)
    eng.reset(0, tuple(jobs))
    for t, decision in enumerate(opt.decisions):
        if eng.done:
            raise AssertionError(f"the engine finished at slot {t}, the optimum plays {len(opt.decisions)} slots")
        eng.step(decision)
        if check_state and not np.array_equal(eng.passes_left, opt.passes_left[t + 1]):
            raise AssertionError(f"slot {t}: engine passes left {eng.passes_left.tolist()}, the program's "
                                 f"{opt.passes_left[t + 1].tolist()}")
    if not eng.done:
        raise AssertionError(f"the optimum's {len(opt.decisions)} decisions leave the episode unfinished")
    return eng
