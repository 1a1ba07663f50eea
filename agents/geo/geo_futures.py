"""Futures a geo planner may imagine, and the engine copies it imagines them on.

* **Future jobs** come from the scenario's arrival MODEL, never from the episode's own future (that
  would be clairvoyance): the model fixes `jobs.count` and draws arrivals uniformly over slots
  0 .. `arrival_slots`-1, so at slot s, with `arrived` jobs seen so far, the `count - arrived`
  jobs still to come arrive uniformly over s+1 .. `arrival_slots`-1 (an i.i.d. uniform arrival
  conditioned on being later than s) and draw their data, demands and latency cost from the
  `[jobs]` ranges by the rules of `tapfinger.sim.geo.scenario.draw_jobs`.
* **Copies**: `copy_engine` is a deep copy of a `GeoEngine` (every state array copied; what is
  left shared is immutable: the frozen scenario and jobs, ints and bools). `imagined_engine` is the
  engine a planner may build at slot s: the jobs that have arrived with their exact state, then the
  sampled future jobs, fresh; nothing of the episode's unarrived jobs goes in.
"""

from __future__ import annotations

import numpy as np

from tapfinger.sim.geo.engine import GeoEngine
from tapfinger.sim.geo.model import GeoJob, GeoScenario
from tapfinger.sim.geo.scenario import draw_job

# The per-job state arrays of the engine (the rest of its arrays depend only on the jobs).
JOB_STATE = ("passes_left", "in_transit", "passes_done", "ps_site", "workers", "completion", "latency_cost",
             "transfer_cost", "exchange_cost", "mb_moved")
# The stream of the futures of an episode seed (distinct from the job generator's stream).
FUTURE_STREAM = 0x6E0F


def future_rng(seed: int, slot: int, index: int) -> np.random.Generator:
    """The generator of future `index` at `slot` of episode `seed`: the same whatever the policy did
    before, so the same seed gives the same episode and candidates share their futures."""
    return np.random.default_rng([FUTURE_STREAM, int(seed) & (2**63 - 1), int(slot), int(index)])


def sample_future_jobs(scenario: GeoScenario, slot: int, arrived: int, rng: np.random.Generator,
                       until: int | None = None) -> tuple[GeoJob, ...]:
    """The jobs still to come after `slot` (when `arrived` have arrived), in arrival order; only
    those arriving by slot `until` when given (the later ones cannot matter to a planner that looks
    no further, and drawing them would only cost time)."""
    jr = scenario.jobs
    remaining = jr.count - int(arrived)
    first = int(slot) + 1
    if remaining <= 0 or first >= jr.arrival_slots:
        return ()  # every job has arrived (or the model has no slot left for one)
    arrivals = np.sort(rng.integers(first, jr.arrival_slots, size=remaining))
    if until is not None:
        arrivals = arrivals[arrivals <= until]
    return tuple(draw_job(scenario, int(a), rng) for a in arrivals)


def copy_engine(engine: GeoEngine) -> GeoEngine:
    """A deep copy of `engine`: stepping one never changes the other."""
    out = GeoEngine.__new__(GeoEngine)
    out.__dict__.update({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in engine.__dict__.items()})
    return out


def arrived_count(engine: GeoEngine) -> int:
    """Jobs arrived so far: a prefix of the job list, which the engine keeps in arrival order."""
    return int(np.count_nonzero(engine.arrived()))


def imagined_engine(engine: GeoEngine, future: tuple[GeoJob, ...]) -> GeoEngine:
    """An engine at `engine`'s slot holding its arrived jobs, in their exact state, then `future`
    (jobs arriving after this slot). Job indices of the arrived jobs are kept, so a decision made
    on `engine` is valid on it."""
    n = arrived_count(engine)
    if any(j.arrival <= engine.slot for j in future):
        raise ValueError(f"imagined future jobs must arrive after slot {engine.slot}")
    sim = GeoEngine(engine.scenario)
    sim.reset(0, jobs=tuple(engine.jobs[:n]) + tuple(future))
    for name in JOB_STATE:
        getattr(sim, name)[:n] = getattr(engine, name)[:n]
    sim.slot = engine.slot
    sim.done = bool(np.all(sim.completion >= 0)) or sim.slot >= sim.scenario.max_slots
    sim.truncated = sim.done and not np.all(sim.completion >= 0)
    return sim
