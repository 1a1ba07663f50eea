"""Geo policies by name (issue 16). Each entry is imported lazily, only when its name is asked for,
so that running the heuristics never imports torch.

The hook for other schedulers is `GEO_FACTORIES`: name -> "module:attribute" (a class or any
callable that takes the options as keywords and returns a `GeoPolicy`), or the callable itself.
The learned policy is one more string entry (`"tapfinger-geo"`, a string costs no import); others
can be added here or at run time with `register_geo_policy`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

from agents.geo.base import GeoPolicy

# The heuristics, in the order of the comparison tables.
GEO_POLICY_NAMES = ("okita", "okita-np", "oasis", "drf", "fifo")

GEO_FACTORIES: dict[str, str | Callable[..., GeoPolicy]] = {
    "okita": "agents.geo.okita:OkitaPolicy",
    "okita-np": "agents.geo.okita:OkitaNPPolicy",
    "oasis": "agents.geo.oasis:OasisPolicy",
    "drf": "agents.geo.simple:DrfPolicy",
    "fifo": "agents.geo.simple:FifoPolicy",
    # the learned geo scheduler (torch): checkpoints/geo/<scenario>.pt unless given `checkpoint=`
    "tapfinger-geo": "agents.geo.learned.policy:GeoLearnedPolicy",
    # rollout over okita with futures sampled from the arrival model (agents/geo/rollout.py): slow, opt-in
    "okita-rollout": "agents.geo.rollout:OkitaRolloutPolicy",
}
# Registered but left out of the default comparison for their run time (about 40x okita's).
SLOW_GEO_POLICIES = ("okita-rollout",)


# The learned geo policies: they read a checkpoint, `checkpoints/geo/<scenario name>.pt` when shipped.
LEARNED_GEO_POLICIES = ("tapfinger-geo",)
SHIPPED_CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints" / "geo"  # apart from the edge ones


def shipped_geo_checkpoint(scenario_name: str) -> Path:
    """Where the shipped checkpoint of a geo scenario is (it may not exist: e.g. geo-50 has none)."""
    return SHIPPED_CHECKPOINTS / f"{scenario_name}.pt"


def geo_policy_names() -> list[str]:
    """Every registered name: the heuristics in table order, then whatever was registered after."""
    return list(GEO_FACTORIES)


def register_geo_policy(name: str, factory: str | Callable[..., GeoPolicy]) -> None:
    """Add (or replace) a name: `factory` is "module:attribute" (imported when first used) or a callable."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a geo policy name must be a non-empty string, got {name!r}")
    if isinstance(factory, str) and factory.count(":") != 1:
        raise ValueError(f"geo policy {name!r}: factory {factory!r} must be written \"module:attribute\"")
    GEO_FACTORIES[name] = factory


def _resolve(name: str) -> Callable[..., GeoPolicy]:
    if name not in GEO_FACTORIES:
        raise ValueError(f"unknown geo policy {name!r}. Fix: use one of {', '.join(GEO_FACTORIES)}")
    entry = GEO_FACTORIES[name]
    if not isinstance(entry, str):
        return entry
    module, _, attr = entry.partition(":")
    return getattr(importlib.import_module(module), attr)


def make_geo_policy(name: str, **options) -> GeoPolicy:
    """A fresh policy of `name`, built with `options` (its constructor's keywords)."""
    factory = _resolve(name)
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as exc:
        raise ValueError(f"geo policy {name!r} does not take the options {sorted(options)} ({exc}). Fix: "
                         f"pass only the keywords its constructor takes (docs/geo-policies.md)") from None
    return factory(**options)
