"""`okita-rollout`: rollout (Bertsekas) with `okita` as the base policy, a policy improvement operator.

Each slot `okita` proposes its decision; a few variants of it are candidates too, and each is
scored by simulation on copies of the engine; the cheapest on average is played.

* **Candidates** (at most `candidates`, okita's decision first, no repeats): for the `jobs`
  highest-priority pending jobs (okita's priority), in that order, (a) the job's next-best option
  by okita's own estimate (its cheapest when okita held it back), on what the other jobs of okita's
  decision leave free, with its data moved by the greedy mover; (b) the job held back one slot,
  the rest planned by okita on what it leaves free; and after the first job's, (c) okita-np's
  decision with the running jobs' current sites kept (no preemption this slot).
* **Futures** (`futures` of them) from the scenario's arrival MODEL, never the episode's own future
  (`agents.geo.geo_futures`): the jobs still to come (`jobs.count` minus those arrived) arrive
  uniformly over the remaining arrival slots with properties drawn from the `[jobs]` ranges, from a
  generator seeded by (episode seed, slot, future index). Every candidate is scored on the same
  futures (common random numbers).
* **Score** of a candidate on a future: on a copy of the engine holding the arrived jobs (exact
  state) and the future's jobs, play the candidate this slot, then okita for `horizon` slots (or
  to the end); the engine's total cost then, plus a cost-to-go for each job still unfinished:
  okita's estimate of its cheapest option alone on the whole capacity (f(JCT at the estimated
  completion) + exchange + transfer) minus the latency cost it has already accrued. It is
  optimistic (no contention after the horizon); all candidates share that bias.
* **Choice**: the lowest mean score; ties (within 1e-9 relative) go to okita's decision, so with
  `candidates=1` this is okita's episode exactly. With `unanimous=True` a variant must also beat
  okita's decision on every sampled future (a guard against the winner's curse of a few noisy
  futures). After a variant is played, okita's memory of the slots each job waited is set as if
  okita had played it. With the episode's exact future and an unbounded horizon this is the
  rollout property (never worse than okita; `tests/test_geo_rollout.py` checks it); with sampled,
  truncated futures it is an approximation, and measured as one.

Defaults: `candidates=4`, `horizon=10`, `futures=2`, `jobs=2`, `unanimous=False`; other keywords go
to okita (`index_weights`, `ps_choices`, `weigh_delay`, `patience`, `aging`). A slot costs up to candidates x
futures x (horizon + 1) slots of okita: slow by design (`docs/geo-policies.md` has its timings).
"""

from __future__ import annotations

import copy

import numpy as np

from agents.geo.base import GeoPolicy
from agents.geo.geo_futures import (arrived_count, copy_engine, future_rng, imagined_engine,
                                    sample_future_jobs)
from agents.geo.okita import OkitaNPPolicy, OkitaPolicy, option_costs
from agents.geo.placement import (JobView, SlotPlan, enumerate_options, greedy_moves, job_view, move_spare,
                                  ps_sites)
from tapfinger.sim.geo.engine import NO_SITE, GeoDecision, GeoEngine
from tapfinger.sim.geo.model import GeoScenario

TIE = 1e-9  # relative: a candidate must beat okita's decision by more than float noise


def same_decision(a: GeoDecision, b: GeoDecision) -> bool:
    if a.placements.keys() != b.placements.keys() or tuple(a.moves) != tuple(b.moves):
        return False
    return all(a.placements[i][0] == b.placements[i][0]
               and np.array_equal(a.placements[i][1], b.placements[i][1]) for i in a.placements)


def pick(scores: np.ndarray, unanimous: bool = False) -> int:
    """The candidate (row of `scores` [C, F]) of lowest mean; row 0 (okita's) unless another beats it by
    more than `TIE`. With `unanimous`, only rows cheaper than row 0 on every future may win."""
    means, best = scores.mean(axis=1), 0
    for k in range(1, scores.shape[0]):
        if unanimous and not np.all(scores[k] < scores[0]):
            continue
        if means[k] < means[best] - TIE * max(1.0, abs(means[best])):
            best = k
    return best


class OkitaRolloutPolicy(GeoPolicy):
    """Rollout over `okita`; see the module docstring."""

    name = "okita-rollout"

    def __init__(self, candidates: int = 4, horizon: int = 10, futures: int = 2, jobs: int = 2,
                 unanimous: bool = False, **okita_options):
        if candidates < 1 or horizon < 0 or futures < 1 or jobs < 0:
            raise ValueError(f"okita-rollout: candidates >= 1, horizon >= 0, futures >= 1 and jobs >= 0 are "
                             f"needed, got candidates={candidates}, horizon={horizon}, futures={futures}, "
                             f"jobs={jobs}")
        self.candidates, self.horizon, self.futures, self.jobs = candidates, horizon, futures, jobs
        self.unanimous, self.okita_options = bool(unanimous), okita_options
        self.base = OkitaPolicy(**okita_options)
        self.seed = 0
        self.simulated_slots = 0  # work done, for the timings
        self.deviations = 0  # slots where a variant beat okita's decision

    def reset(self, scenario: GeoScenario, seed: int) -> None:
        self.base.reset(scenario, seed)
        self.seed, self.simulated_slots, self.deviations = int(seed), 0, 0

    # ------------------------------------------------------------------ one slot
    def decide(self, engine: GeoEngine) -> GeoDecision:
        prior = dict(self.base.waited)
        proposal = self.base.decide(engine)
        if self.candidates == 1 or engine.pending().size == 0:
            return proposal
        cands = self._candidates(engine, proposal, prior)
        if len(cands) == 1:
            return proposal
        slot, n = engine.slot, arrived_count(engine)
        futures = [imagined_engine(engine, sample_future_jobs(engine.scenario, slot, n, future_rng(self.seed, slot, f),
                                                              until=slot + self.horizon))
                   for f in range(self.futures)]
        waits = [dict(self.base.waited)] + [self._waited_after(engine, d, prior) for d in cands[1:]]
        scores = np.array([[self._simulate(copy_engine(fut), d, w) for fut in futures] for d, w in zip(cands, waits)])
        best = pick(scores, self.unanimous)
        if best:
            self.deviations += 1
            self.base.waited = waits[best]
        return cands[best]

    def _okita(self, waited: dict[int, int]) -> OkitaPolicy:
        """A copy of the base policy with its own memory (`waited`), for one simulation or variant."""
        p = copy.copy(self.base)
        p.waited, p.fixed, p.ends = dict(waited), dict(self.base.fixed), {}
        return p

    @staticmethod
    def _waited_after(engine: GeoEngine, decision: GeoDecision, prior: dict[int, int]) -> dict[int, int]:
        """okita's count of slots waited in a row, had it played `decision` (0 when placed)."""
        placed = {i for i, (_, w) in decision.placements.items() if np.asarray(w).sum() > 0}
        return {int(i): 0 if int(i) in placed else prior.get(int(i), 0) + 1 for i in engine.pending()}

    # ------------------------------------------------------------------ candidates
    def _candidates(self, engine: GeoEngine, proposal: GeoDecision, prior: dict[int, int]) -> list[GeoDecision]:
        out = [proposal]

        def add(d: GeoDecision | None) -> None:
            if d is not None and len(out) < self.candidates and not any(same_decision(d, o) for o in out):
                out.append(d)

        views = sorted((job_view(engine, i) for i in engine.pending()),
                       key=lambda v: (-self.base.priority(v, engine), v.i))
        for n, view in enumerate(views[:self.jobs]):
            if len(out) >= self.candidates:
                break
            add(self._next_best(engine, proposal, view))
            if view.i in proposal.placements:
                add(self._held(engine, view.i, prior))
            if n == 0:
                add(self._non_preemptive(engine, prior))
        return out

    def _plan_without(self, engine: GeoEngine, decision: GeoDecision, i: int) -> SlotPlan:
        """`decision` as a plan, less job i's placement and moves (their resources and links freed)."""
        plan = SlotPlan(engine)
        for j, (ps, w) in decision.placements.items():
            if j != i and ps != NO_SITE:
                plan.place(j, ps, w)
            elif j != i:
                plan.keep(j, ps, w)
        for m in decision.moves:
            if m[0] != i:
                plan.moves.append(m)
                plan.link_left[m[1], m[2]] -= m[3] * engine.block_mb[m[0]]
        return plan

    def _next_best(self, engine: GeoEngine, proposal: GeoDecision, view: JobView) -> GeoDecision | None:
        """Job `view.i`'s cheapest option by okita's estimate other than the proposal's placement."""
        plan = self._plan_without(engine, proposal, view.i)
        sites = ps_sites(view, engine, plan.free, self.base.ps_choices, int(engine.ps_site[view.i]))
        opts = enumerate_options(view, plan.free, engine, sites, self.base.weights)
        if opts is None or len(opts) == 0:
            return None
        costs = option_costs(view, opts)
        now = proposal.placements.get(view.i)
        for k in np.argsort(costs, kind="stable"):
            ps, workers = opts.row(int(k))
            if now is None or ps != now[0] or not np.array_equal(workers, now[1]):
                plan.place(view.i, ps, workers)
                greedy_moves(plan, view, workers > 0, spare=move_spare(view, workers, int(opts.slots[k])))
                return plan.decision()
        return None

    def _held(self, engine: GeoEngine, i: int, prior: dict[int, int]) -> GeoDecision:
        """okita's decision with job i held back this slot: planned on a copy where i is not pending."""
        view = copy_engine(engine)
        view.completion[i] = max(engine.slot - 1, 0)  # a throwaway copy: only `pending()` reads it
        return self._okita(prior).decide(view)

    def _non_preemptive(self, engine: GeoEngine, prior: dict[int, int]) -> GeoDecision:
        """okita-np's decision, the running jobs keeping their current PS and worker sites."""
        np_policy = OkitaNPPolicy(**self.okita_options)
        np_policy.waited = dict(prior)
        np_policy.fixed = {int(i): (int(engine.ps_site[i]), engine.workers[i] > 0) for i in engine.pending()
                           if engine.ps_site[i] != NO_SITE and engine.workers[i].sum() > 0}
        return np_policy.decide(engine)

    # ------------------------------------------------------------------ scoring
    def _simulate(self, sim: GeoEngine, first: GeoDecision, waited: dict[int, int]) -> float:
        """Play `first`, then okita for `horizon` slots (or to the end), on `sim`: its total cost
        then, plus the cost-to-go of the jobs left unfinished."""
        base = self._okita(waited)
        sim.step(first)
        played = 1
        while not sim.done and played <= self.horizon:
            sim.step(base.decide(sim))
            played += 1
        self.simulated_slots += played
        return sim.total_cost() + self.cost_to_go(sim)

    def cost_to_go(self, sim: GeoEngine) -> float:
        """Per unfinished job: okita's estimate of its cheapest option alone on the whole capacity
        (what it would still cost: f(JCT) + exchange + transfer) less the latency cost accrued so
        far; without an option, the latency of waiting to the end of the episode."""
        total = 0.0
        for i in sim.pending():
            view = job_view(sim, i)
            cap = sim.capacity
            opts = enumerate_options(view, cap, sim, ps_sites(view, sim, cap, self.base.ps_choices,
                                                              int(sim.ps_site[i])), self.base.weights)
            if opts is None or len(opts) == 0:
                final = view.latency(float(sim.scenario.max_slots - sim.arrival[i]))
            else:
                final = float(option_costs(view, opts).min())
            total += final - float(sim.latency_cost[i])
        return total
