"""Policies by name. Each entry is imported lazily so that a heuristic run never imports torch."""

from __future__ import annotations

import importlib

from agents.base import Policy
from tapfinger.sim.scenario import Scenario

# name -> "module:Class", or ("module:Class", constructor options)
POLICIES: dict[str, str | tuple[str, dict]] = {
    "random": "agents.heuristics.simple:RandomPolicy",
    "min": "agents.heuristics.simple:MinPolicy",
    "optimus": "agents.heuristics.optimus:OptimusPolicy",
    "optimus-np": "agents.heuristics.optimus:OptimusNPPolicy",
    "optimus-paper": "agents.heuristics.optimus:OptimusPaperPolicy",
    "tiresias": "agents.heuristics.tiresias:TiresiasPolicy",
    "tiresias-np": "agents.heuristics.tiresias:TiresiasNPPolicy",
    "fifo": "agents.heuristics.queue_order:FifoPolicy",
    "sjf": "agents.heuristics.queue_order:SjfPolicy",
    "drf": "agents.heuristics.queue_order:DrfPolicy",
    "greedy": "agents.heuristics.greedy:GreedyPolicy",
    "tapfinger": "agents.learned.policy:LearnedPolicy",
    # ablations of the learned policy (DESIGN.md; issue "learned scheduler", item 7)
    "tapfinger-no-pointer": ("agents.learned.policy:LearnedPolicy", {"pointer": False}),
    "tapfinger-no-bayes": ("agents.learned.policy:LearnedPolicy", {"bayes": False}),
    "tapfinger-single": ("agents.learned.policy:LearnedPolicy", {"multi_task": False}),
    "tapfinger-multi": ("agents.learned.policy:LearnedPolicy", {"multi_task": True}),
    "tapfinger-mlp": "agents.learned.policy:LearnedPolicy",  # its own checkpoint: <scenario>-mlp.pt
}


def policy_names() -> list[str]:
    return list(POLICIES)


def make_policy(name: str, scenario: Scenario, seed: int = 0, **kwargs) -> Policy:
    if name.startswith(("onnx:", "pt2:")):  # an exported policy file (`tapfinger export`)
        from agents.exported import ExportedPolicy

        kind, path = name.split(":", 1)
        return ExportedPolicy(scenario, seed=seed, path=path, kind=kind, **kwargs)
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}. Fix: use one of {', '.join(POLICIES)}")
    entry = POLICIES[name]
    target, preset = (entry, {}) if isinstance(entry, str) else entry
    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)(scenario, seed=seed, **{**preset, **kwargs})


# What the demo compares, strongest first; names not (yet) registered are skipped.
DEMO_HEURISTICS = ["greedy", "optimus", "tiresias", "sjf", "fifo", "drf", "min", "random"]


def shipped_checkpoint(scenario_name: str):
    """The checkpoint shipped in `checkpoints/` for a scenario, or None."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "checkpoints" / f"{scenario_name}.pt"
    return path if path.is_file() else None


def policy_options(name: str, scenario: Scenario, checkpoint: str | None = None) -> dict:
    """Constructor options of a policy for an evaluation (learned policies need a checkpoint)."""
    if name == "tapfinger-mlp":  # the no-graph ablation is a separately trained network
        path = shipped_checkpoint(f"{scenario.name}-mlp")
        if path is None:
            raise ValueError(f"no no-graph (MLP) checkpoint ships for scenario {scenario.name!r}. Fix: train one "
                             f"with `tapfinger train --encoder mlp` and save it as checkpoints/{scenario.name}-mlp.pt.")
        return {"checkpoint": str(path)}
    if name.startswith("tapfinger"):
        path = checkpoint or shipped_checkpoint(scenario.name)
        if path is None:
            raise ValueError(f"no checkpoint for policy {name!r} on scenario {scenario.name!r}. Fix: pass "
                             f"--checkpoint PATH (from `tapfinger train`), or use a scenario with a shipped "
                             f"checkpoint in checkpoints/.")
        return {"checkpoint": str(path)}
    return {}


def demo_policies(scenario_name: str) -> list[str]:
    names = [n for n in DEMO_HEURISTICS if n in POLICIES]
    if "tapfinger" in POLICIES and shipped_checkpoint(scenario_name) is not None:
        names.insert(0, "tapfinger")
    return names
