"""The geo engine: one episode of distributed jobs over sites, slot by slot, with its cost ledger.

Each slot the scheduler gives a complete `GeoDecision`: where each running job's parameter server
(PS) is, how many workers it has on each site, and which data blocks move. In this order:
validation (nothing changes on an invalid decision), moves leave (their transfer cost is paid),
training, the exchange cost of every placed worker, moved blocks arrive, the latency cost of the
slot, completions. `docs/geo-distributed.md` has the rules and why.

State per job and site is `passes_left[i, r]`: the block-passes still to train of the blocks at r.
A site trains a job's blocks one after another (a block gets all its epochs before the next
starts), so at most one block per job and site is partly trained and `passes_left // epochs` of
them are untouched. Only untouched blocks move: this is what lets the exact optimum
(`tapfinger.evaluation.geo_optimal`) keep the same aggregate state and stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tapfinger.sim.geo.model import GeoJob, GeoScenario
from tapfinger.sim.geo.scenario import draw_jobs

NO_SITE = -1
# Megabytes a link may carry above its capacity: float noise of summing block sizes, not room for
# more data. Public so that policies planning moves test a link exactly as the engine does.
LINK_TOLERANCE_MB = 1e-9


def _is_int(value) -> bool:
    """An integer, and not a bool (True would read as site 1) nor a float (1.5 would index)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


class GeoActionError(ValueError):
    """A decision that breaks the rules (a capacity, a missing PS, a move of absent blocks...)."""


@dataclass(frozen=True)
class GeoDecision:
    # job -> (PS site, workers per site [R]); jobs absent do not run this slot
    placements: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)
    moves: tuple[tuple[int, int, int, int], ...] = ()  # (job, from site, to site, blocks)

    def __post_init__(self) -> None:
        # Validation and the step both read these; an iterator would be used up by the first read
        # (a decision validated, then nothing moved) and a caller's dict could change in between.
        object.__setattr__(self, "placements", dict(self.placements))
        object.__setattr__(self, "moves", tuple(self.moves))


def _mb(value: float) -> str:
    """Megabytes for a message: short when that is exact, else every digit (300.0000001 above a
    300 MB link must not print as 300)."""
    value = float(value)
    return f"{value:g}" if float(f"{value:g}") == value else repr(value)


def _job_problem(k: int, job: GeoJob, R: int, K: int, max_slots: int) -> str | None:
    """Why explicit job `k` cannot run in this scenario, or None (drawn jobs always can)."""
    for name, size, want in (("blocks", len(job.blocks), R), ("worker", len(job.worker), K), ("ps", len(job.ps), K)):
        if size != want:
            return f"job {k}: {name} has {size} entries, the scenario has {want}. Fix: give one per " \
                   f"{'site' if name == 'blocks' else 'resource'}"
    checks = (("epochs", job.epochs >= 1, "at least 1"), ("blocks_per_slot", job.blocks_per_slot >= 1, "at least 1"),
              ("blocks", min(job.blocks) >= 0, "no negative entry"), ("blocks", sum(job.blocks) >= 1,
                                                                      "at least one block somewhere"),
              ("worker", min(job.worker, default=0) >= 0, "no negative demand"),
              ("ps", min(job.ps, default=0) >= 0, "no negative demand"),
              ("block_mb", job.block_mb >= 0, ">= 0"), ("exchange_mb", job.exchange_mb >= 0, ">= 0"),
              ("arrival", 0 <= job.arrival < max_slots, f"in 0..{max_slots - 1} (max_slots {max_slots})"))
    for name, ok, fix in checks:
        if not ok:
            return f"job {k}: {name} = {getattr(job, name)!r} is invalid. Fix: make it {fix}"
    return None


class GeoEngine:
    """`reset(seed)`, then `step(decision)` until `done`. Arrays are indexed by job (arrival order)."""

    def __init__(self, scenario: GeoScenario):
        self.scenario = scenario
        self.R, self.K = scenario.num_sites, scenario.num_resources
        self.capacity, self.cost, self.link_mb = scenario.sites.arrays()

    def reset(self, seed: int, jobs: tuple[GeoJob, ...] | None = None) -> None:
        if jobs is None:
            jobs = draw_jobs(self.scenario, seed)
        else:
            jobs = tuple(jobs)
            for k, j in enumerate(jobs):
                problem = _job_problem(k, j, self.R, self.K, self.scenario.max_slots)
                if problem is not None:
                    raise ValueError(problem)
        if any(b.arrival > a.arrival for a, b in zip(jobs[1:], jobs[:-1])):
            raise ValueError("jobs must be given in arrival order")
        self.jobs, self.J = jobs, len(jobs)
        self.arrival = np.array([j.arrival for j in jobs], dtype=np.int64)
        self.epochs = np.array([j.epochs for j in jobs], dtype=np.int64)
        self.rate = np.array([j.blocks_per_slot for j in jobs], dtype=np.int64)
        self.block_mb = np.array([j.block_mb for j in jobs], dtype=float)
        self.exchange_mb = np.array([j.exchange_mb for j in jobs], dtype=float)
        self.worker_need = np.array([j.worker for j in jobs], dtype=np.int64).reshape(self.J, self.K)
        self.ps_need = np.array([j.ps for j in jobs], dtype=np.int64).reshape(self.J, self.K)
        self.blocks0 = np.array([j.blocks for j in jobs], dtype=np.int64).reshape(self.J, self.R)
        self.passes_left = self.blocks0 * self.epochs[:, None]
        self.in_transit = np.zeros((self.J, self.R), dtype=np.int64)  # passes arriving at the slot's end
        self.passes_done = np.zeros(self.J, dtype=np.int64)
        self.ps_site = np.full(self.J, NO_SITE, dtype=np.int64)
        self.workers = np.zeros((self.J, self.R), dtype=np.int64)
        self.completion = np.full(self.J, -1, dtype=np.int64)
        self.latency_cost = np.zeros(self.J)
        self.transfer_cost = np.zeros(self.J)
        self.exchange_cost = np.zeros(self.J)
        self.mb_moved = np.zeros(self.J)
        self.slot = 0
        self.done = self.J == 0
        self.truncated = False

    # ------------------------------------------------------------------ queries
    def arrived(self) -> np.ndarray:
        return self.arrival <= self.slot

    def pending(self) -> np.ndarray:
        """Jobs that have arrived and not completed, in arrival order: all a scheduler may know of."""
        return np.flatnonzero(self.arrived() & (self.completion < 0))

    def movable_blocks(self, job: int) -> np.ndarray:
        """Untouched blocks of `job` at each site: the ones that may move."""
        return self.passes_left[job] // self.epochs[job]

    def usage(self, placements: dict[int, tuple[int, np.ndarray]]) -> np.ndarray:
        """[R, K] resources a placement takes."""
        used = np.zeros((self.R, self.K), dtype=np.int64)
        for i, (ps, workers) in placements.items():
            used += np.asarray(workers, dtype=np.int64)[:, None] * self.worker_need[i]
            if ps != NO_SITE:
                used[ps] += self.ps_need[i]
        return used

    def slot_exchange_cost(self, job: int, ps: int, workers: np.ndarray) -> float:
        return float(np.dot(workers, self.cost[:, ps]) * self.exchange_mb[job] / 100.0) if ps != NO_SITE else 0.0

    def total_cost(self) -> float:
        return float(self.latency_cost.sum() + self.transfer_cost.sum() + self.exchange_cost.sum())

    # ------------------------------------------------------------------ validation
    def decision_problem(self, decision: GeoDecision) -> str | None:
        """Why `decision` breaks the rules, or None."""
        pending = set(self.pending().tolist())
        for i, (ps, workers) in decision.placements.items():
            if not _is_int(i):  # True would read as job 1, 1.0 would not index
                return f"placement key {i!r} must be a job index (an integer, not a bool or float)"
            if i not in pending:
                return f"job {i} is not pending (not arrived, or already complete)"
            w = np.asarray(workers)
            if w.shape != (self.R,) or not np.issubdtype(w.dtype, np.integer) or np.any(w < 0):
                return f"job {i}: workers must be {self.R} integers >= 0, got {workers!r}"
            if np.any(w > self.scenario.max_workers_per_site):
                return f"job {i}: at most {self.scenario.max_workers_per_site} workers per site"
            if not _is_int(ps) or not (ps == NO_SITE or 0 <= ps < self.R):
                return f"job {i}: PS site {ps!r} must be an integer in 0..{self.R - 1} (or {NO_SITE}: no PS)"
            if ps == NO_SITE and w.sum() > 0:
                return f"job {i}: workers need a parameter server; give it a PS site"
        over = np.argwhere(self.usage(decision.placements) > self.capacity)
        if over.size:
            r, k = over[0]
            return f"site {r} would need more {self.scenario.resources[k]} than its {self.capacity[r, k]}"
        return self._moves_problem(decision.moves, pending)

    def _moves_problem(self, moves, pending: set[int]) -> str | None:
        out = np.zeros((self.J, self.R), dtype=np.int64)
        link = np.zeros((self.R, self.R))
        for m in moves:
            if len(m) != 4 or not all(_is_int(v) for v in m):
                return f"move {m!r} must be 4 integers (job, from site, to site, blocks)"
            i, src, dst, n = (int(v) for v in m)
            if i not in pending:
                return f"move {m!r}: job {i} is not pending"
            if not (0 <= src < self.R and 0 <= dst < self.R) or src == dst or n < 1:
                return f"move {m!r}: needs two different sites in 0..{self.R - 1} and at least one block"
            out[i, src] += n
            link[src, dst] += n * self.block_mb[i]
        short = np.argwhere(out > self.passes_left // self.epochs[:, None])
        if short.size:
            i, r = short[0]
            return (f"job {i} moves {out[i, r]} blocks from site {r}, which has {self.movable_blocks(i)[r]} "
                    f"untouched blocks")
        full = np.argwhere((self.link_mb > 0) & (link > self.link_mb + LINK_TOLERANCE_MB))
        if full.size:
            a, b = full[0]
            return f"link {a}->{b} would carry {_mb(link[a, b])} MB this slot, above its {_mb(self.link_mb[a, b])} MB"
        return None

    # ------------------------------------------------------------------ the slot
    def step(self, decision: GeoDecision) -> float:
        """Play one slot; returns its cost (transfer + exchange + latency accrued)."""
        if self.done:
            raise GeoActionError("the episode is over; call reset")
        problem = self.decision_problem(decision)
        if problem is not None:
            raise GeoActionError(f"slot {self.slot}: {problem}")
        before = self.total_cost()
        self._move(decision.moves)
        self.ps_site[:] = NO_SITE
        self.workers[:] = 0
        for i, (ps, workers) in decision.placements.items():
            self.ps_site[i], self.workers[i] = ps, workers
            self.exchange_cost[i] += self.slot_exchange_cost(i, ps, self.workers[i])
        trained = np.minimum(self.rate[:, None] * self.workers, self.passes_left)
        self.passes_left -= trained
        self.passes_done += trained.sum(axis=1)
        self.passes_left += self.in_transit
        self.in_transit[:] = 0
        self._end_slot()
        return self.total_cost() - before

    def _move(self, moves) -> None:
        for i, src, dst, n in moves:
            passes = int(n) * int(self.epochs[i])
            self.passes_left[i, src] -= passes
            self.in_transit[i, dst] += passes
            self.transfer_cost[i] += self.cost[src, dst] * self.block_mb[i] * n / 100.0
            self.mb_moved[i] += self.block_mb[i] * n

    def _end_slot(self) -> None:
        live = np.flatnonzero(self.arrived() & (self.completion < 0))
        for i in live:  # f(0) at arrival, then one more slot of waiting; completion if nothing is left
            f, waited = self.jobs[i].latency, int(self.slot - self.arrival[i])
            self.latency_cost[i] += f(waited + 1) - (f(waited) if waited else 0.0)
        finished = live[self.passes_left[live].sum(axis=1) == 0]
        self.completion[finished] = self.slot
        self.ps_site[finished] = NO_SITE
        self.workers[finished] = 0
        self.slot += 1
        if np.all(self.completion >= 0):
            self.done = True
        elif self.slot >= self.scenario.max_slots:
            self.done = self.truncated = True

    # ------------------------------------------------------------------ results
    def records(self) -> list[dict]:
        """Per job: arrival, completion (-1 unfinished), JCT, and its costs."""
        out = []
        for i in range(self.J):
            done = self.completion[i] >= 0
            out.append({"arrival": int(self.arrival[i]), "completion": int(self.completion[i]),
                        "jct": int(self.completion[i] + 1 - self.arrival[i]) if done else None,
                        "latency_cost": float(self.latency_cost[i]), "transfer_cost": float(self.transfer_cost[i]),
                        "exchange_cost": float(self.exchange_cost[i]), "mb_moved": float(self.mb_moved[i])})
        return out
