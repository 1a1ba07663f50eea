"""The interface of a geo scheduler: once per slot, a complete `GeoDecision` from what it may know."""

from __future__ import annotations

from tapfinger.sim.geo.engine import GeoDecision, GeoEngine
from tapfinger.sim.geo.model import GeoScenario


class GeoPolicy:
    """A scheduler of distributed jobs over sites.

    `decide` reads the engine as a scheduler would see the system: the pending jobs
    (`engine.pending()`, arrived and unfinished) with their data, demands and progress, the sites'
    capacities, costs and links, and the current placement. It never reads a job that has not
    arrived (that would be clairvoyance; `tests/test_geo_policies.py` checks it)."""

    name = "base"
    learned = False

    def reset(self, scenario: GeoScenario, seed: int) -> None:
        """Called before each episode; `seed` is for policies that draw random numbers."""

    def decide(self, engine: GeoEngine) -> GeoDecision:
        raise NotImplementedError
