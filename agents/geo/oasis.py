"""`oasis`: OASiS (Bao, Peng, Wu, Li, "Online Job Scheduling in Distributed Machine Learning
Clusters", INFOCOM 2018) reduced to this per-slot setting.

OASiS admits a job when the utility of its best schedule exceeds the price of the resources that
schedule takes, each resource priced by an exponential function of its utilisation,
p(u) = L * (U / L) ** (u / C), with U and L the highest and lowest value per unit of resource
among the jobs: cheap (L) on an idle cluster, so anything worth running runs; as dear as the best
job can pay (U) on a full one, so the last units go to the jobs that value them most.

Here, every slot: a job's value of a placement is the latency cost it avoids (f at the horizon,
what never finishing would cost, minus f at its estimated completion) minus its estimated exchange
and transfer costs; its price is the resource-slots it takes (per site and resource, over its
estimated slots) at the current prices. Jobs go in order of value density (the value of their best
placement on the whole capacity per normalised resource-slot); each takes the placement of most
value over price when that is positive. A job cannot be rejected for good here (every job must
finish), so jobs refused this slot then take the best placement left free, in the same order
(they wait when none fits). `docs/geo-policies.md` states our reading and the parameters.
"""

from __future__ import annotations

import numpy as np

from agents.geo.base import GeoPolicy
from agents.geo.placement import (DEFAULT_INDEX, JobView, Options, SlotPlan, enumerate_options, greedy_moves,
                                  index_sets, job_view, move_spare, ps_sites)
from tapfinger.sim.geo.engine import GeoDecision, GeoEngine


def option_values(view: JobView, opts: Options, horizon: int) -> np.ndarray:
    """[N] latency cost avoided (against never finishing) minus exchange and transfer costs."""
    never = view.latency(float(max(horizon, view.tau + 1)))
    return never - opts.latency(view) - opts.exchange * opts.slots - opts.transfer


def resource_slots(view: JobView, opts: Options) -> np.ndarray:
    """[N, K] resource-slots of each option: its workers and PS over its estimated slots."""
    return (opts.workers.sum(axis=1)[:, None] * view.worker + view.ps) * opts.slots[:, None]


class OasisPolicy(GeoPolicy):
    """Per slot: jobs by value density, each at its option of most value over price (see above)."""

    name = "oasis"

    def __init__(self, low_share: float = 0.5, index_weights=DEFAULT_INDEX, ps_choices: int = 3):
        if not 0 < low_share <= 1 or ps_choices < 1:
            raise ValueError("oasis: low_share must be in (0, 1] and ps_choices >= 1")
        self.low_share, self.weights, self.ps_choices = float(low_share), index_sets(index_weights), ps_choices

    def options(self, view: JobView, engine: GeoEngine, free: np.ndarray) -> Options | None:
        sites = ps_sites(view, engine, free, self.ps_choices, int(engine.ps_site[view.i]))
        return enumerate_options(view, free, engine, sites, self.weights)

    def decide(self, engine: GeoEngine) -> GeoDecision:
        plan = SlotPlan(engine)
        views = [job_view(engine, i) for i in engine.pending()]
        best = [self.best_on_capacity(v, engine) for v in views]
        low, high = self.price_range(engine, best)
        total = np.maximum(engine.capacity.sum(axis=0), 1).astype(float)
        density = [b[0] / max(float((b[1] / total).sum()), 1e-12) if b else -np.inf for b in best]
        order = sorted(range(len(views)), key=lambda k: (-density[k], views[k].i))
        refused = [views[k] for k in order if not self.admit(plan, views[k], engine, low, high)]
        for view in refused:  # best effort on what is left: nobody is rejected for good
            self.admit(plan, view, engine, low, high, priced=False)
        return plan.decision()

    def best_on_capacity(self, view: JobView, engine: GeoEngine) -> tuple[float, np.ndarray] | None:
        """(value, [K] resource-slots) of the job's most valuable placement on the whole capacity."""
        opts = self.options(view, engine, engine.capacity)
        if opts is None:
            return None
        values = option_values(view, opts, engine.scenario.max_slots - int(engine.arrival[view.i]))
        k = int(np.argmax(values))
        return float(values[k]), resource_slots(view, opts)[k].astype(float)

    def price_range(self, engine: GeoEngine, best: list) -> tuple[np.ndarray, np.ndarray]:
        """[K] L and U: per resource, the lowest (times low_share, shared over the K resources, so an
        idle cluster's price never exceeds the value) and highest value per resource-slot."""
        K = engine.K
        dens = np.array([b[0] / np.where(b[1] > 0, b[1], np.nan) for b in best if b and b[0] > 0]).reshape(-1, K)
        seen = np.isfinite(dens)  # a job that needs none of a resource says nothing of its price
        high = np.where(seen, dens, -np.inf).max(axis=0, initial=-np.inf)
        low = np.where(seen, dens, np.inf).min(axis=0, initial=np.inf)
        high, low = np.where(np.isfinite(high), high, 0.0), np.where(np.isfinite(low), low, 0.0)
        return low * self.low_share / K, np.maximum(high, low * self.low_share / K)

    def admit(self, plan: SlotPlan, view: JobView, engine: GeoEngine, low: np.ndarray, high: np.ndarray,
              priced: bool = True) -> bool:
        """Place the job at its option of most value over price (> 0 when `priced`); False if none."""
        opts = self.options(view, engine, plan.free)
        if opts is None or len(opts) == 0:
            return False
        score = option_values(view, opts, engine.scenario.max_slots - int(engine.arrival[view.i]))
        if priced:
            score = score - self.prices(plan, view, opts, low, high)
        k = int(np.argmax(score))
        if priced and score[k] <= 0:
            return False
        ps, workers = opts.row(k)
        plan.place(view.i, ps, workers)
        greedy_moves(plan, view, workers > 0, spare=move_spare(view, workers, int(opts.slots[k])))
        return True

    @staticmethod
    def prices(plan: SlotPlan, view: JobView, opts: Options, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """[N] each option's resource-slots at the prices of the sites' current utilisation."""
        ratio = np.divide(high, low, out=np.ones_like(high), where=low > 0)
        price = low * ratio ** plan.used_fraction()  # [R, K]
        per_slot = opts.workers @ (price @ view.worker) + (price @ view.ps)[opts.ps]
        return per_slot * opts.slots
