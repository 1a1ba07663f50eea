"""What the geo schedulers share: a slot's plan under capacity, a job's view, sites ranked and
workers filled into them, the greedy data mover, and a job's candidate placements with their
estimated slots and costs (`enumerate_options`, the planner of `okita` and `oasis`).

A plan is built job by job within one slot: each placement takes its resources from `SlotPlan.free`
and each move its megabytes from `SlotPlan.link_left`, so whatever a policy adds stays valid for
`GeoEngine.decision_problem` (per-site capacity, per-link capacity, untouched blocks only).
`docs/geo-policies.md` states the rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tapfinger.sim.geo.engine import LINK_TOLERANCE_MB, NO_SITE, GeoDecision, GeoEngine
from tapfinger.sim.geo.model import LatencyCost

BIG = 1 << 30  # "no limit" as an integer (a site's room for a job that needs none of a resource)


@dataclass(frozen=True)
class JobView:
    """What a scheduler may know of a pending job this slot (its own data, demands and age)."""

    i: int
    tau: int  # slots since arrival: finishing in D slots from now gives JCT = tau + D
    passes: np.ndarray  # [R] block-passes left per site
    movable: np.ndarray  # [R] untouched blocks per site (the ones that may move)
    epochs: int
    rate: int  # block-passes one worker trains per slot
    worker: np.ndarray  # [K]
    ps: np.ndarray  # [K]
    exchange_mb: float
    block_mb: float
    latency: LatencyCost

    @property
    def total(self) -> int:
        return int(self.passes.sum())

    @property
    def stuck(self) -> np.ndarray:
        """[R] passes of a partly trained block: they can only be trained where they are."""
        return self.passes - self.epochs * self.movable


def job_view(engine: GeoEngine, i: int) -> JobView:
    i = int(i)
    return JobView(i=i, tau=int(engine.slot - engine.arrival[i]), passes=engine.passes_left[i].copy(),
                   movable=engine.movable_blocks(i).copy(), epochs=int(engine.epochs[i]),
                   rate=int(engine.rate[i]), worker=engine.worker_need[i], ps=engine.ps_need[i],
                   exchange_mb=float(engine.exchange_mb[i]), block_mb=float(engine.block_mb[i]),
                   latency=engine.jobs[i].latency)


class SlotPlan:
    """One slot's decision under construction: free resources and link megabytes left."""

    def __init__(self, engine: GeoEngine):
        self.engine = engine
        self.free = engine.capacity.copy()  # [R, K]
        link = engine.link_mb.astype(float)
        self.link_left = np.where(link > 0, link, np.inf)  # 0 = unlimited
        self.placements: dict[int, tuple[int, np.ndarray]] = {}
        self.moves: list[tuple[int, int, int, int]] = []

    def place(self, i: int, ps: int, workers: np.ndarray) -> None:
        eng, workers = self.engine, np.asarray(workers, dtype=np.int64)
        if ps == NO_SITE:  # free[-1] would silently charge the PS to the last site
            raise ValueError(f"job {i}: a placement needs a PS site; a job that does not run is not placed")
        self.free -= workers[:, None] * eng.worker_need[i]
        self.free[ps] -= eng.ps_need[i]
        assert np.all(self.free >= 0), "a placement was added without room for it"
        self.placements[int(i)] = (int(ps), workers)

    def unplace(self, i: int) -> None:
        """Give back the resources of job i's placement (to plan it again)."""
        ps, workers = self.placements.pop(int(i))
        self.free += workers[:, None] * self.engine.worker_need[i]
        self.free[ps] += self.engine.ps_need[i]

    def keep(self, i: int, ps: int, workers: np.ndarray) -> None:
        """Record a placement whose resources the caller has already taken from `free`."""
        self.placements[int(i)] = (int(ps), np.asarray(workers, dtype=np.int64))

    def move(self, i: int, src: int, dst: int, n: int, block_mb: float) -> int:
        """Move up to n untouched blocks of job i (the caller counts them) from src to dst, clipped
        to what the link still carries (`link_blocks`); returns the blocks moved."""
        n = max(min(int(n), link_blocks(self.link_left[src, dst], block_mb)), 0)
        if n > 0:
            self.link_left[src, dst] -= n * block_mb
            self.moves.append((int(i), int(src), int(dst), n))
        return n

    def moved_out(self, i: int) -> np.ndarray:
        """[R] blocks of job i this plan already moves off each site (read from `moves` itself, so
        moves appended by hand count too)."""
        out = np.zeros(self.engine.R, dtype=np.int64)
        for j, src, _, n in self.moves:
            if j == i:
                out[src] += n
        return out

    def used_fraction(self) -> np.ndarray:
        """[R, K] share of each site's capacity already taken (0 where a site has none of k)."""
        cap = self.engine.capacity
        return np.divide(cap - self.free, cap, out=np.zeros(cap.shape), where=cap > 0)

    def decision(self) -> GeoDecision:
        return GeoDecision(dict(self.placements), tuple(self.moves))


# ---------------------------------------------------------------------------- capacity
def room(free: np.ndarray, need: np.ndarray, cap: int) -> np.ndarray:
    """[R] how many units of `need` fit on each site's `free` resources, at most `cap`."""
    need = np.asarray(need)
    if not np.any(need > 0):
        return np.full(free.shape[0], cap, dtype=np.int64)
    units = np.min(free[:, need > 0] // need[need > 0], axis=1)
    return np.clip(units, 0, cap).astype(np.int64)


def fits(free_row: np.ndarray, need: np.ndarray) -> bool:
    return bool(np.all(free_row >= need))


def hosts(capacity: np.ndarray, need: np.ndarray) -> np.ndarray:
    """[R] sites whose whole capacity could hold `need` (ever, not just now)."""
    return np.all(capacity >= np.asarray(need), axis=1)


def by_data(passes: np.ndarray) -> np.ndarray:
    """Sites holding passes, most first (ties: lower index)."""
    have = np.flatnonzero(passes > 0)
    return have[np.argsort(-passes[have], kind="stable")]


def nearest(cost: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Every site, cheapest first to reach the weighted data `weight` [R] (ties: lower index)."""
    return np.argsort(cost.T @ weight, kind="stable")


def useful_workers(view: JobView) -> np.ndarray:
    """[R] workers that the local passes keep busy this slot."""
    return -(-view.passes // view.rate)


def fill(order: np.ndarray, room_r: np.ndarray, limit: np.ndarray, total: int) -> np.ndarray:
    """Workers per site: sites in `order`, each up to min(room, limit), until `total` are placed."""
    out = np.zeros(room_r.shape[0], dtype=np.int64)
    for r in order:
        if total <= 0:
            break
        n = int(min(room_r[r], limit[r], total))
        out[r], total = n, total - n
    return out


def site_features(view: JobView, free: np.ndarray, capacity: np.ndarray, cost: np.ndarray, ps: int) -> np.ndarray:
    """[3, R] what makes a site good for the job's next worker with its PS at `ps`, each in [0, 1]:
    the share of the job's untrained data already there, the inverse of its mean bandwidth cost to
    the job's data sites and PS, and the share of its resources still free. A ranking index is a
    weighted sum of these rows."""
    local = view.passes / max(view.passes.max(), 1)
    ends = np.union1d(np.flatnonzero(view.passes > 0), [ps])
    inv = 1.0 / (1.0 + cost[:, ends].mean(axis=1))
    need = view.worker > 0
    if need.any():
        cap = capacity[:, need]
        spare = np.divide(free[:, need], cap, out=np.zeros(cap.shape), where=cap > 0).min(axis=1)
    else:
        spare = np.ones(free.shape[0])
    return np.stack([local, inv / inv.max(), spare])


# ---------------------------------------------------------------------------- data moves
def greedy_moves(plan: SlotPlan, view: JobView, targets: np.ndarray, sources: np.ndarray | None = None,
                 spare: np.ndarray | None = None) -> np.ndarray:
    """Move the job's untouched blocks from `sources` (bool [R]; default: every site outside
    `targets`) to `targets` (bool [R]: its worker sites), cheapest link first, within each link's
    megabytes left. With `spare` ([R] blocks each target can still train in time), a first pass
    fills spare only and a second moves the rest. Returns [R] the blocks moved from each site; the
    moves go into `plan`."""
    eng = plan.engine
    left = view.movable - plan.moved_out(view.i)
    left[targets if sources is None else ~sources | targets] = 0
    src, dst = np.flatnonzero(left > 0), np.flatnonzero(targets)
    moved = np.zeros(eng.R, dtype=np.int64)
    if src.size == 0 or dst.size == 0:
        return moved
    order = np.argsort(eng.cost[np.ix_(src, dst)], axis=None, kind="stable")
    pairs = [(int(src[k // dst.size]), int(dst[k % dst.size])) for k in order]
    for limit in ([spare.astype(np.int64).copy(), None] if spare is not None else [None]):
        for s, d in pairs:
            n = min(int(left[s]), link_blocks(plan.link_left[s, d], view.block_mb))
            if limit is not None:
                n = min(n, max(int(limit[d]), 0))
                limit[d] -= n
            n = plan.move(view.i, s, d, n, view.block_mb)
            left[s] -= n
            moved[s] += n
    return moved


def link_blocks(link_left: float, block_mb: float) -> int:
    """Whole blocks of `block_mb` that fit in a link's `link_left` megabytes this slot. The slack is
    the engine's own LINK_TOLERANCE_MB (it refuses a link carrying more than capacity + that), so a
    plan is never more permissive than the engine: any larger slack would let a link written out
    as, say, 299.9999995 MB take three 100 MB blocks that the engine then refuses."""
    if np.isinf(link_left):
        return BIG
    return max(int((link_left + LINK_TOLERANCE_MB) // block_mb), 0) if link_left > 0 else 0


def ps_sites(view: JobView, engine: GeoEngine, free: np.ndarray, count: int, current: int = -1) -> list[int]:
    """Candidate PS sites where the PS fits `free`: the job's current PS, its `count` biggest data
    sites and the site nearest its data (cheapest to reach from all of it), then nearer sites
    until `count` + 1 are found."""
    first = [current] if current >= 0 else []
    first += [int(r) for r in by_data(view.passes)[:count]]
    order = nearest(engine.cost, view.passes.astype(float))
    out: list[int] = []
    for r in first + [int(r) for r in order]:
        if len(out) > count and r not in first:
            break
        if r not in out and fits(free[r], view.ps):
            out.append(r)
    return out


def move_spare(view: JobView, workers: np.ndarray, slots: int) -> np.ndarray:
    """[R] blocks each worker site can still train within `slots` beyond its own passes."""
    spare = (view.rate * workers * slots - view.passes) // view.epochs
    return np.where(workers > 0, np.maximum(spare, 0), 0)


# ---------------------------------------------------------------------------- options of a job
Rankings = tuple[tuple[float, float, float], ...]
# Weights of (local data, inverse bandwidth cost, free resources) of the site rankings tried: one led
# by the job's own data, one by bandwidth cost alone (which finds the moves worth their transfer).
DEFAULT_INDEX = ((2.0, 1.0, 0.5), (0.0, 1.0, 0.0))


def index_sets(weights) -> tuple[tuple[float, float, float], ...]:
    """One (a, b, c) triple or several, as a tuple of float triples (a clear error otherwise)."""
    sets = (weights,) if len(weights) == 3 and all(isinstance(w, (int, float)) for w in weights) else weights
    out = tuple(tuple(float(w) for w in t) for t in sets)
    if not out or any(len(t) != 3 or min(t) < 0 for t in out):
        raise ValueError(f"index_weights must be a triple (local data, inverse bandwidth cost, free resources) "
                         f"of weights >= 0, or a list of such triples; got {weights!r}")
    return out


@dataclass(frozen=True)
class Options:
    """A job's candidate placements for this slot, one row each, with what they are expected to
    cost if kept to the end: the slots to finish, the exchange cost per slot and the transfer cost
    of the data that must move to the worker sites."""

    workers: np.ndarray  # [N, R]
    ps: np.ndarray  # [N]
    slots: np.ndarray  # [N] D: slots from now to completion
    exchange: np.ndarray  # [N] per slot
    transfer: np.ndarray  # [N]

    def __len__(self) -> int:
        return int(self.ps.shape[0])

    def latency(self, view: JobView, delay: int = 0) -> np.ndarray:
        """[N] f(JCT) if the job finishes as estimated (after `delay` idle slots first)."""
        ages, back = np.unique(self.slots + view.tau + delay, return_inverse=True)
        return np.array([view.latency(float(a)) for a in ages])[back]

    def row(self, k: int) -> tuple[int, np.ndarray]:
        return int(self.ps[k]), self.workers[k].astype(np.int64)


def enumerate_options(view: JobView, free: np.ndarray, engine: GeoEngine, ps_sites: list[int],
                      rankings: Rankings, base: np.ndarray | None = None,
                      allowed: np.ndarray | None = None) -> Options | None:
    """For each PS site that fits, each ranking (weights of `site_features`) and each worker count
    n = 1, 2, ...: the first n workers of the ranked sites, each site filled before the next (to
    its room; a data site other than the PS's only to the workers its own data keeps busy), on top
    of `base` (the workers a non-preemptive job keeps), only on `allowed` sites when given."""
    R, cap = engine.R, engine.scenario.max_workers_per_site
    base = np.zeros(R, dtype=np.int64) if base is None else base
    useful = np.where(view.passes > 0, useful_workers(view), cap)
    weights = np.asarray(rankings, dtype=float)  # [G, 3]
    seqs, sites = [], []
    for c in ps_sites:
        left = free - base[:, None] * view.worker
        left[c] -= view.ps
        if np.any(left < 0):
            continue
        limit = useful.copy()
        limit[c] = cap
        room_r = np.clip(np.minimum(room(left, view.worker, cap), limit) - base, 0, None)
        if allowed is not None:
            room_r = np.where(allowed, room_r, 0)
        # beyond the data sites, a few more sites' workers to take moved data are all a job can use
        most = int(room_r[view.passes > 0].sum()) + cap * int((view.passes > 0).sum())
        ranks = weights @ site_features(view, left, engine.capacity, engine.cost, c)
        ranks = ranks + (view.stuck > 0) * 10.0  # a partly trained block trains only where it is
        for rank in ranks:
            order = np.lexsort((np.arange(R), -rank))
            seqs.append(np.repeat(order, room_r[order])[:most])
            sites.append(c)
    if not seqs:
        return None
    W, ps, dest, reach = _rows(base, seqs, sites, engine.cost)
    if W.shape[0] == 0:
        return None
    return _estimate(view, engine, W, ps, dest, reach)


def _rows(base: np.ndarray, seqs: list[np.ndarray], sites: list[int], cost: np.ndarray):
    """All candidate rows at once: workers [N, R] (`base` plus each prefix of each sequence, and
    base alone per PS site if it has workers), their PS sites [N], and per row and site the worker
    site its moved blocks go to [N, R] (the cheapest link's end) with that link's cost [N, R].
    Sequences are padded into one [S, L] array; `cost` is symmetric (the scenario checks it), so
    cost[seq] [S, L, R] is the cost from every site to each sequence's workers."""
    R, S, L = base.shape[0], len(seqs), max(len(q) for q in seqs)
    seq = np.zeros((S, L), dtype=np.int64)
    valid = np.arange(L)[None, :] < np.array([len(q) for q in seqs])[:, None]
    for k, q in enumerate(seqs):
        seq[k, :len(q)] = q
    steps = np.zeros((S, L, R), dtype=np.int64)
    np.put_along_axis(steps, seq[:, :, None], valid[:, :, None].astype(np.int64), axis=2)
    W = base + np.cumsum(steps, axis=1)
    masked = np.where(base[None, :] > 0, cost, np.inf)
    dest0, reach0 = np.argmin(masked, axis=1), np.min(masked, axis=1)
    A = np.where(valid[:, :, None], cost[seq], np.inf)  # A[s, j, r]: cost from r to the j-th worker
    low = np.minimum.accumulate(A, axis=1)
    prev = np.concatenate([np.full((S, 1, R), np.inf), low[:, :-1]], axis=1)
    first = np.maximum.accumulate(np.where(A < prev, np.arange(L)[None, :, None], 0), axis=1)
    dest = np.take_along_axis(seq[:, :, None], first, axis=1)
    keep = reach0 <= low  # a base site is as near
    dest, reach = np.where(keep, dest0, dest), np.minimum(low, reach0)
    W, dest, reach = W[valid], dest[valid], reach[valid]
    ps = np.repeat(np.asarray(sites), valid.sum(axis=1))
    if base.any():
        alone = np.unique(sites)
        W, ps = np.vstack([np.tile(base, (alone.size, 1)), W]), np.concatenate([alone, ps])
        dest = np.vstack([np.tile(dest0, (alone.size, 1)), dest])
        reach = np.vstack([np.tile(reach0, (alone.size, 1)), reach])
    return W, ps, dest, reach


def _estimate(view: JobView, engine: GeoEngine, W: np.ndarray, ps: np.ndarray, dest: np.ndarray,
              reach: np.ndarray) -> Options:
    """Each row's slots to finish, exchange per slot and transfer cost: a site trains its own passes
    and those moved to it (from every site without workers, to the nearest worker site), moved ones
    from the slot after they leave (later when a link is too small for them in one slot)."""
    N, R = W.shape
    has = W > 0
    off = np.where(has, 0, view.movable)  # blocks that must move
    flat = (np.arange(N)[:, None] * R + dest).ravel()
    inc = np.bincount(flat, weights=(off * view.epochs).ravel(), minlength=N * R).reshape(N, R)
    lag = _lag(engine, view, off, dest, flat, N, R)
    local = np.where(has, view.passes, 0).astype(float)
    busy = _busy(view, W, local, inc, lag)
    # right-size: a site that only trains its own passes needs no more workers than finish them
    # within the row's slots (idle workers still pay their exchange)
    target = np.maximum(busy.max(axis=1, keepdims=True), 1) * view.rate
    W = np.where(has & (inc == 0), np.minimum(W, np.ceil(local / target)), W).astype(np.int64)
    busy = _busy(view, W, local, inc, lag)
    stuck_off = np.where(W > 0, 0, view.stuck).sum(axis=1)
    slots = np.maximum(busy.max(axis=1) + (stuck_off > 0), 1)  # a partial block left behind waits
    exchange = (W * busy * engine.cost[ps]).sum(axis=1) * view.exchange_mb / 100.0
    transfer = np.where(off > 0, off * reach, 0.0).sum(axis=1) * view.block_mb / 100.0
    # exchange per slot: the mean over the job's remaining slots
    return Options(W, ps, slots.astype(np.int64), exchange / slots, transfer)


def _busy(view: JobView, W: np.ndarray, local: np.ndarray, inc: np.ndarray, lag: np.ndarray) -> np.ndarray:
    """[N, R] slots each worker site trains: its own and incoming passes, incoming from `lag` on
    (floats: integer division of these arrays is the planner's bottleneck)."""
    speed = view.rate * np.maximum(W, 1.0)
    busy = np.ceil((local + inc) / speed)
    late = np.where(inc > 0, lag + np.ceil(inc / speed), 0.0)
    return np.where(W > 0, np.maximum(busy, late), 0.0)


def _lag(engine: GeoEngine, view: JobView, off: np.ndarray, dest: np.ndarray, flat: np.ndarray, N: int,
         R: int) -> np.ndarray:
    """[N, R] slots until the last block moved to each site has arrived (1 over unlimited links)."""
    if not np.any(engine.link_mb > 0):
        return np.ones((N, R))
    link = engine.link_mb[np.arange(R)[None, :], dest]
    per_slot = np.maximum((link + LINK_TOLERANCE_MB) // view.block_mb, 1)  # whole blocks a link carries per slot
    slots = np.where(link > 0, -(-off // per_slot), 1.0)
    lag = np.zeros(N * R)
    np.maximum.at(lag, flat, np.where(off > 0, slots, 0).ravel())
    return np.maximum(lag.reshape(N, R), 1)
