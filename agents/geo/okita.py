"""`okita` and `okita-np`: our reconstruction of the scheduling algorithm of Okita's patent.

Each slot the pending jobs are ordered by a priority (latency sensitivity, waiting time, data left)
and planned one after another on what the jobs before them left free. For a job, every worker
count n and a few parameter-server (PS) sites are tried; for each, n workers are filled into the
sites ranked by an index (`placement.site_features`: free resources, inverse mean bandwidth
cost, local untrained data), and the option's cost is estimated as

    f(JCT if it keeps this placement) + exchange cost per slot x its slots + transfer cost of the
    data that must move to its worker sites.

The cheapest option is taken, its data moved greedily over the cheapest links (within their
capacity). Under contention a job compares that cheapest option with waiting for its best option on
the whole capacity until the jobs now holding those sites are expected to be done (migration
against delay), and waits at most `patience` slots in a row. `okita` re-plans every job every slot
(preemptive); `okita-np` (the patent's Okita*) keeps a started job's PS site and worker sites until
it finishes (it may add workers on those sites). `docs/geo-policies.md` states the rules and our
reading of the patent.
"""

from __future__ import annotations

import numpy as np

from agents.geo.base import GeoPolicy
from agents.geo.placement import (DEFAULT_INDEX, JobView, Options, SlotPlan, enumerate_options, greedy_moves,
                                  index_sets, job_view, move_spare, ps_sites, useful_workers)
from tapfinger.sim.geo.engine import GeoDecision, GeoEngine
from tapfinger.sim.geo.model import GeoScenario


def option_costs(view: JobView, opts: Options, delay: int = 0) -> np.ndarray:
    """[N] estimated cost of each option kept to the end: latency + exchange + transfer."""
    return opts.latency(view, delay) + opts.exchange * opts.slots + opts.transfer


class OkitaPolicy(GeoPolicy):
    """Preemptive: every pending job is planned afresh every slot."""

    name = "okita"
    preemptive = True

    def __init__(self, index_weights=DEFAULT_INDEX, ps_choices: int = 3, weigh_delay: bool = True,
                 patience: int = 2, aging: float = 0.1):
        if ps_choices < 1 or patience < 0 or aging < 0:
            raise ValueError("okita: ps_choices must be >= 1, patience and aging >= 0")
        self.weights = index_sets(index_weights)
        self.ps_choices, self.weigh_delay, self.patience, self.aging = ps_choices, weigh_delay, patience, aging
        self.waited: dict[int, int] = {}
        self.fixed: dict[int, tuple[int, np.ndarray]] = {}
        self.ends: dict[int, int] = {}  # this slot: the slots each job placed is expected to take

    def reset(self, scenario: GeoScenario, seed: int) -> None:
        self.waited, self.fixed, self.ends = {}, {}, {}

    def priority(self, view: JobView, engine: GeoEngine) -> float:
        """Higher first: the latency cost one more slot of waiting adds now, grown by the time waited,
        per slot of work left (worker-slots of its untrained data at the most workers it could use)."""
        slope = view.latency.increment(view.tau) + 1e-9
        most = max(int(np.minimum(useful_workers(view), engine.scenario.max_workers_per_site).sum()), 1)
        work = view.total / (view.rate * most)
        return slope * (1.0 + self.aging * view.tau) / (1.0 + work)

    def decide(self, engine: GeoEngine) -> GeoDecision:
        plan = SlotPlan(engine)
        self.ends = {}
        views = [job_view(engine, i) for i in engine.pending()]
        ordered = sorted(views, key=lambda v: (-self.priority(v, engine), v.i))
        ordered = self.reserve(plan, ordered, engine)
        for view in ordered:
            self.plan_job(plan, view, engine)
        live = {v.i for v in views}
        self.waited = {i: n for i, n in self.waited.items() if i in live}
        self.fixed = {i: f for i, f in self.fixed.items() if i in live}
        return plan.decision()

    def reserve(self, plan: SlotPlan, ordered: list[JobView], engine: GeoEngine) -> list[JobView]:
        """The order to plan in, after whatever must be held before anyone is planned (nothing here)."""
        return ordered

    def options(self, plan: SlotPlan, view: JobView, engine: GeoEngine, free: np.ndarray) -> Options | None:
        current = int(engine.ps_site[view.i])
        return enumerate_options(view, free, engine, ps_sites(view, engine, free, self.ps_choices, current),
                                 self.weights)

    def plan_job(self, plan: SlotPlan, view: JobView, engine: GeoEngine) -> None:
        opts = self.options(plan, view, engine, plan.free)
        if opts is None or len(opts) == 0:
            self.waited[view.i] = self.waited.get(view.i, 0) + 1
            return
        costs = option_costs(view, opts)
        k = int(np.argmin(costs))
        if self.should_wait(plan, view, engine, float(costs[k])):
            self.waited[view.i] = self.waited.get(view.i, 0) + 1
            return
        self.waited[view.i] = 0
        ps, workers = opts.row(k)
        plan.place(view.i, ps, workers)
        self.ends[view.i] = int(opts.slots[k])
        greedy_moves(plan, view, workers > 0, spare=move_spare(view, workers, int(opts.slots[k])))
        if workers.sum() > 0 and view.i not in self.fixed:
            self.fixed[view.i] = (ps, workers > 0)

    def should_wait(self, plan: SlotPlan, view: JobView, engine: GeoEngine, best: float) -> bool:
        """Delay against migration: wait when the job's best option on the whole capacity, started
        once the jobs now holding its sites are expected to be done, costs less than the best
        option on what is free now."""
        if not self.weigh_delay or self.waited.get(view.i, 0) >= self.patience:
            return False
        if np.array_equal(plan.free, engine.capacity):
            return False  # nothing is taken: waiting cannot buy a better placement
        ideal = self.options(plan, view, engine, engine.capacity)
        if ideal is None:
            return False
        k = int(np.argmin(option_costs(view, ideal)))
        ps, workers = ideal.row(k)
        sites = workers > 0
        sites[ps] = True
        holders = [j for j, (q, w) in plan.placements.items() if sites[q] or np.any(w[sites] > 0)]
        delay = max([self.ends.get(j, 1) for j in holders], default=1)
        return float(option_costs(view, ideal, delay=delay)[k]) < best


class OkitaNPPolicy(OkitaPolicy):
    """Non-preemptive (Okita*): a started job keeps its PS site and worker sites to the end, and its
    workers there while they have data to train; it is planned before the jobs not started."""

    name = "okita-np"
    preemptive = False

    def reserve(self, plan: SlotPlan, ordered: list[JobView], engine: GeoEngine) -> list[JobView]:
        """Started jobs first, each holding its PS and kept workers before any job grows, so that no
        started job can lose its place to another one's new workers."""
        started = [v for v in ordered if v.i in self.fixed]
        for v in started:
            plan.place(v.i, self.fixed[v.i][0], self.kept(v, engine))
        return started + [v for v in ordered if v.i not in self.fixed]

    def kept(self, view: JobView, engine: GeoEngine) -> np.ndarray:
        """[R] the workers a started job keeps: last slot's on its sites, while its data there lasts."""
        return np.where(self.fixed[view.i][1], np.minimum(engine.workers[view.i], useful_workers(view)), 0)

    def options(self, plan: SlotPlan, view: JobView, engine: GeoEngine, free: np.ndarray) -> Options | None:
        if view.i not in self.fixed:
            return super().options(plan, view, engine, free)
        ps, sites = self.fixed[view.i]
        return enumerate_options(view, free, engine, [ps], self.weights, base=self.kept(view, engine),
                                 allowed=sites)

    def plan_job(self, plan: SlotPlan, view: JobView, engine: GeoEngine) -> None:
        if view.i not in self.fixed:
            return super().plan_job(plan, view, engine)
        plan.unplace(view.i)  # its reservation: planned again, on top of what it keeps
        opts = self.options(plan, view, engine, plan.free)
        ps, sites = self.fixed[view.i]
        if opts is None or len(opts) == 0:  # no worker has data this slot: keep the PS, bring the data
            plan.place(view.i, ps, np.zeros(engine.R, dtype=np.int64))
            greedy_moves(plan, view, sites)
            return
        k = int(np.argmin(option_costs(view, opts)))
        ps, workers = opts.row(k)
        plan.place(view.i, ps, workers)
        self.ends[view.i] = int(opts.slots[k])
        greedy_moves(plan, view, workers > 0, spare=move_spare(view, workers, int(opts.slots[k])))
