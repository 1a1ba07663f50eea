"""Futures a planner may imagine: arrival streams sampled from the scenario's arrival MODEL, never
read from the episode's own future (that would be clairvoyance).

* Poisson scenarios: the model itself. The remaining tasks of the episode (the model fixes the
  episode's task count; the planner has counted the arrivals so far) arrive from the next slot on,
  Poisson(rate) per slot, types uniform, visibility by the scenario's rule: exactly how
  `tapfinger.sim.workload.poisson_workload` draws an episode, shifted to start after the present,
  with deadlines by the scenario's rule (`apply_deadline_rule`).
* Trace scenarios: the trace's empirical model, not its sequence. A trace replays the same rows in
  every episode, so a planner that read the rows after "now" would know the future exactly. It gets
  summary statistics instead: the mean arrival rate over the trace (tasks per slot), and the rows'
  (type, work, deadline offset) drawn independently, with replacement: the order is forgotten.

Future tasks carry work 1 (the trace's recorded work, as schedulers are told it): a planner does
not know a task's estimate before it arrives.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tapfinger.sim.scenario import Scenario
from tapfinger.sim.workload import (Workload, _visible_sets, apply_deadline_rule, make_workload, no_tasks,
                                    poisson_workload)


class FutureSampler:
    """`sample(slot, arrived, rng, horizon)`: a workload of the tasks still to come in the `horizon`
    slots after `slot`, when `arrived` tasks have arrived so far (none past the episode's count)."""

    def __init__(self, scenario: Scenario):
        self.scenario = scenario
        self.N = scenario.num_clusters
        if scenario.arrivals.process == "poisson":
            self.total = scenario.arrivals.tasks
            self._rows = None
        else:
            self._rows = _empirical_rows(scenario)
            self.total = int(self._rows[0].size)

    def sample(self, slot: int, arrived: int, rng: np.random.Generator, horizon: int) -> Workload:
        remaining = self.total - arrived
        if remaining <= 0:
            return no_tasks(self.N)
        if self._rows is None:
            sc = self.scenario
            # enough tasks for the horizon at any plausible draw (the rest would be cut anyway)
            enough = min(remaining, int(sc.arrivals.rate * horizon + 8 * np.sqrt(sc.arrivals.rate * horizon) + 8))
            wl = poisson_workload(sc.with_overrides(arrivals=replace(sc.arrivals, tasks=enough)), rng)
            wl = apply_deadline_rule(replace(wl, arrival_slot=wl.arrival_slot + slot + 1), sc, rng)
        else:
            wl = self._sample_trace(slot, remaining, rng, horizon)
        return _head(wl, int(np.searchsorted(wl.arrival_slot, slot + horizon, side="right")))

    def _sample_trace(self, slot: int, remaining: int, rng: np.random.Generator, horizon: int) -> Workload:
        types, work, offsets, rate = self._rows
        per_slot = rng.poisson(rate, size=horizon)
        arrival = (np.repeat(np.arange(horizon), per_slot)[:remaining] + slot + 1).astype(np.int64)
        count = arrival.size
        pick = rng.integers(types.size, size=count)
        deadline = np.where(offsets[pick] >= 0, arrival + offsets[pick], -1)
        return Workload(arrival_slot=arrival, task_type=types[pick].copy(),
                        visible=_visible_sets(rng, count, self.N, self.scenario.visibility),
                        work=work[pick].copy(), deadline=deadline.astype(np.int64))


def _empirical_rows(scenario: Scenario) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(types, work, deadline offsets in slots (-1 = none), mean tasks per slot) of a trace."""
    wl = make_workload(scenario, 0)  # the trace's rows (only the visibility depends on the seed)
    span = int(wl.arrival_slot.max()) + 1
    offsets = np.where(wl.deadline >= 0, wl.deadline - wl.arrival_slot, -1)
    # the work as schedulers are told it (a hidden truth of an uncertain scenario never leaves the engine)
    return wl.task_type.copy(), wl.known_work.copy(), offsets, wl.num_tasks / span


def _head(wl: Workload, count: int) -> Workload:
    return Workload(arrival_slot=wl.arrival_slot[:count], task_type=wl.task_type[:count],
                    visible=wl.visible[:count], work=wl.work[:count], deadline=wl.deadline[:count])

