"""Policies by name. Each entry is imported lazily so that a heuristic run never imports torch."""

from __future__ import annotations

import importlib

from agents.base import Policy
from tapfinger.scenario import Scenario

# name -> "module:Class"
POLICIES: dict[str, str] = {
    "random": "agents.heuristics.simple:RandomPolicy",
    "min": "agents.heuristics.simple:MinPolicy",
}


def policy_names() -> list[str]:
    return list(POLICIES)


def make_policy(name: str, scenario: Scenario, seed: int = 0, **kwargs) -> Policy:
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}. Fix: use one of {', '.join(POLICIES)}")
    module, cls = POLICIES[name].split(":")
    return getattr(importlib.import_module(module), cls)(scenario, seed=seed, **kwargs)
