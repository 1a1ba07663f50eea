"""The simple geo baselines: `fifo` and `drf`. Neither looks at a bandwidth cost when it places; both
train each job's data where it lies and move data only when a job would otherwise never finish
(`placement.stranded_moves`). `docs/geo-policies.md` states the rules.
"""

from __future__ import annotations

import heapq
from dataclasses import replace

import numpy as np

from agents.geo.base import GeoPolicy
from agents.geo.placement import (JobView, SlotPlan, by_data, fill, fits, greedy_moves, hosts, job_view, nearest,
                                  room, useful_workers)
from tapfinger.sim.geo.engine import GeoDecision, GeoEngine


class FifoPolicy(GeoPolicy):
    """Jobs in arrival order; each its PS at the site holding most of its data (where the PS fits)
    and as many workers as fit on the sites holding its untrained data, no more than that data keeps
    busy, at most `max_workers_per_site` each."""

    name = "fifo"

    def decide(self, engine: GeoEngine) -> GeoDecision:
        plan = SlotPlan(engine)
        cap = engine.scenario.max_workers_per_site
        for i in engine.pending():
            view = job_view(engine, i)
            if needs_fallback(engine, view):
                view = stranded_moves(plan, view)
            placed = _place_on_data(plan, view, cap)
            if placed is not None:
                plan.place(view.i, *placed)
        return plan.decision()


def _place_on_data(plan: SlotPlan, view: JobView, cap: int) -> tuple[int, np.ndarray] | None:
    """The first PS site (most data first, then nearest the data) that leaves room for at least one
    worker on the job's data sites, with every worker that fits there."""
    order = by_data(view.passes)
    limit = np.minimum(useful_workers(view), cap)
    for ps in ps_candidates(plan, view, order):
        left = plan.free.copy()
        left[ps] -= view.ps
        workers = fill(order, room(left, view.worker, cap), limit, int(limit.sum()))
        if workers.sum() > 0:
            return ps, workers
    return None


class DrfPolicy(GeoPolicy):
    """Dominant Resource Fairness: workers handed out one at a time, each to the job with the lowest
    dominant share (its resources over the total capacity, the largest over resources; ties: the
    earlier arrival), on its data site with the most passes not yet covered this slot. A job's
    first worker brings its PS, at its biggest data site where both fit (else the nearest site
    where the PS fits). A job leaves the hand-out when no worker of it fits or helps any more."""

    name = "drf"

    def decide(self, engine: GeoEngine) -> GeoDecision:
        plan = SlotPlan(engine)
        total = np.maximum(engine.capacity.sum(axis=0), 1).astype(float)
        views = {int(i): job_view(engine, i) for i in engine.pending()}
        for i, view in views.items():
            if needs_fallback(engine, view):
                views[i] = stranded_moves(plan, view)
        held = {i: (-1, np.zeros(engine.R, dtype=np.int64)) for i in views}
        heap = [(0.0, i) for i in views]
        heapq.heapify(heap)
        while heap:
            _, i = heapq.heappop(heap)
            grown = _one_more(plan, views[i], *held[i])
            if grown is None:
                continue
            held[i] = grown
            ps, workers = grown
            use = workers.sum() * views[i].worker + views[i].ps
            heapq.heappush(heap, (float(np.max(use / total)), i))
        for i, (ps, workers) in held.items():
            if workers.sum() > 0:
                plan.keep(i, ps, workers)  # _one_more took the resources from plan.free
        return plan.decision()


def _one_more(plan: SlotPlan, view: JobView, ps: int, workers: np.ndarray) -> tuple[int, np.ndarray] | None:
    """The job's placement with one more worker (taken from `plan.free`), or None."""
    cap = plan.engine.scenario.max_workers_per_site
    uncovered = view.passes - view.rate * workers
    sites = by_data(np.where(workers < cap, uncovered, 0))
    if ps < 0:
        for c in ps_candidates(plan, view, by_data(view.passes)):
            left = plan.free.copy()
            left[c] -= view.ps
            ok = [r for r in sites if fits(left[r], view.worker)]
            if ok:
                plan.free[c] -= view.ps
                return _add(plan, view, c, workers, int(ok[0]))
        return None
    ok = [r for r in sites if fits(plan.free[r], view.worker)]
    return _add(plan, view, ps, workers, int(ok[0])) if ok else None


def _add(plan: SlotPlan, view: JobView, ps: int, workers: np.ndarray, r: int) -> tuple[int, np.ndarray]:
    plan.free[r] -= view.worker
    workers = workers.copy()
    workers[r] += 1
    return ps, workers


def needs_fallback(engine: GeoEngine, view: JobView) -> bool:
    """Whether the job's data sits where the simple policies alone would never train all of it."""
    data = view.passes > 0
    return bool(not np.any(data & hosts(engine.capacity, view.worker + view.ps))
                or np.any(data & ~hosts(engine.capacity, view.worker)))


def stranded_moves(plan: SlotPlan, view: JobView) -> JobView:
    """The starvation fallback of the simple policies, which otherwise never move data: blocks on
    sites that could never hold one of the job's workers go to the nearest site that could; and
    when none of the job's data sites could hold a worker and its PS together, every block goes to
    the nearest site that could (so no job waits forever for resources its sites do not have).
    Returns the job's view without the blocks that leave (they train nowhere this slot)."""
    eng = plan.engine
    can_work = hosts(eng.capacity, view.worker)
    both = hosts(eng.capacity, view.worker + view.ps)
    data = view.passes > 0
    if not np.any(data & both) and np.any(both):  # (the scenario's check makes such a site exist)
        order = nearest(eng.cost, view.movable.astype(float))
        dst = np.zeros(eng.R, dtype=bool)
        dst[int(order[both[order]][0])] = True
        return without(view, greedy_moves(plan, view, dst))
    dead = data & ~can_work & (view.movable > 0)
    if np.any(dead):  # to the nearest site that could hold a worker
        return without(view, greedy_moves(plan, view, can_work, sources=dead))
    return view


def without(view: JobView, moved: np.ndarray) -> JobView:
    """The view once `moved` [R] blocks have left their sites."""
    return replace(view, passes=view.passes - view.epochs * moved, movable=view.movable - moved)


def ps_candidates(plan: SlotPlan, view: JobView, first: np.ndarray) -> list[int]:
    """Sites in `first` order, then every other site nearest the job's data first, where the PS fits now."""
    rest = nearest(plan.engine.cost, view.passes.astype(float))
    seen, out = set(), []
    for r in list(first) + list(rest):
        r = int(r)
        if r not in seen and fits(plan.free[r], view.ps):
            out.append(r)
        seen.add(r)
    return out
