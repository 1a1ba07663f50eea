"""Policies by name. Each entry is imported lazily so that a heuristic run never imports torch.

A name resolves to its class (`policy_class`); what the class says about itself (`learned`,
whether its constructor takes a `checkpoint`) decides how an evaluation treats it, never the
spelling of the name. `onnx:FILE` / `pt2:FILE` name an exported policy file (`tapfinger export`).
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

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
    "rollout": "agents.heuristics.rollout:RolloutPolicy",
    # deadline-aware baselines (docs/deadline-baselines.md)
    "edf": "agents.heuristics.deadline_aware:EdfPolicy",
    "elasticflow": "agents.heuristics.deadline_aware:ElasticFlowPolicy",
    "elasticflow-edge": "agents.heuristics.deadline_aware:ElasticFlowEdgePolicy",
    "edgeflow": "agents.heuristics.deadline_aware:EdgeFlowPolicy",
    "tapfinger": "agents.learned.policy:LearnedPolicy",
    # ablations of the learned policy (DESIGN.md; issue "learned scheduler", item 7)
    "tapfinger-no-pointer": ("agents.learned.policy:LearnedPolicy", {"pointer": False}),
    "tapfinger-no-bayes": ("agents.learned.policy:LearnedPolicy", {"bayes": False}),
    "tapfinger-single": ("agents.learned.policy:LearnedPolicy", {"multi_task": False}),
    "tapfinger-multi": ("agents.learned.policy:LearnedPolicy", {"multi_task": True}),
    "tapfinger-mlp": "agents.learned.policy:LearnedPolicy",  # its own checkpoint: see CHECKPOINT_NAMES
}

# Policies trained separately from the scenario's main checkpoint: name -> shipped file stem suffix,
# and the encoder of their network (what tells their checkpoint from the main one).
CHECKPOINT_NAMES = {"tapfinger-mlp": "-mlp"}  # the no-graph ablation: checkpoints/<scenario>-mlp.pt
CHECKPOINT_ENCODERS = {"tapfinger-mlp": "mlp"}

EXPORTED_KINDS = ("onnx", "pt2")
EXPORTED_CLASS = "agents.exported:ExportedPolicy"

# What the demo compares, strongest first; names not (yet) registered are skipped.
DEMO_HEURISTICS = ["greedy", "optimus", "tiresias", "sjf", "fifo", "drf", "min", "random"]
# Added to the default comparison on scenarios with deadlines, declines or a cloud tier.
DEADLINE_HEURISTICS = ["edgeflow", "elasticflow-edge", "elasticflow", "edf"]


def policy_names() -> list[str]:
    return list(POLICIES)


def exported_file(name: str) -> tuple[str, str] | None:
    """(kind, path) of an `onnx:FILE` / `pt2:FILE` name, else None."""
    kind, sep, path = name.partition(":")
    return (kind, path) if sep and kind in EXPORTED_KINDS else None


def _entry(name: str) -> tuple[str, dict]:
    """("module:Class", constructor presets) of a name."""
    exported = exported_file(name)
    if exported:
        return EXPORTED_CLASS, {"kind": exported[0], "path": exported[1]}
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}. Fix: use one of {', '.join(POLICIES)} "
                         f"(or onnx:FILE / pt2:FILE for an exported policy)")
    entry = POLICIES[name]
    return (entry, {}) if isinstance(entry, str) else entry


def policy_class(name: str) -> type[Policy]:
    """The class a policy name builds (imports its module; nothing is constructed)."""
    module, cls = _entry(name)[0].split(":")
    return getattr(importlib.import_module(module), cls)


def make_policy(name: str, scenario: Scenario, seed: int = 0, **kwargs) -> Policy:
    return policy_class(name)(scenario, seed=seed, **{**_entry(name)[1], **kwargs})


def takes_checkpoint(cls: type[Policy]) -> bool:
    """A policy built from a training checkpoint: its constructor has a `checkpoint` option."""
    return "checkpoint" in inspect.signature(cls).parameters


def shipped_checkpoint(scenario_name: str) -> Path | None:
    """The checkpoint shipped in `checkpoints/` for a scenario, or None."""
    path = Path(__file__).resolve().parent.parent / "checkpoints" / f"{scenario_name}.pt"
    return path if path.is_file() else None


def policy_options(name: str, scenario: Scenario, checkpoint: str | None = None) -> dict:
    """Constructor options of a policy for an evaluation (a policy built from a checkpoint gets
    `--checkpoint`, or the one shipped for the scenario)."""
    if not takes_checkpoint(policy_class(name)):
        return {}
    if name in CHECKPOINT_NAMES:  # trained separately: --checkpoint only if it is such a network
        return {"checkpoint": _separate_checkpoint(name, scenario, checkpoint)}
    path = checkpoint or shipped_checkpoint(scenario.name)
    if path is None:
        raise ValueError(f"no checkpoint for policy {name!r} on scenario {scenario.name!r}. Fix: pass "
                         f"--checkpoint PATH (from `tapfinger train`), or use a scenario with a shipped "
                         f"checkpoint in checkpoints/.")
    return {"checkpoint": str(path)}


def _separate_checkpoint(name: str, scenario: Scenario, checkpoint: str | None) -> str:
    """The checkpoint of a policy trained separately (tapfinger-mlp): --checkpoint when it holds
    such a network (so that a run may name one), else the shipped one. A --checkpoint of the main
    (graph) network is left to `tapfinger`, so one evaluation can compare the two."""
    encoder = CHECKPOINT_ENCODERS[name]
    why = ""
    if checkpoint is not None:
        from agents.learned.checkpoint import CheckpointError, read_payload

        try:
            found = read_payload(checkpoint)["model_config"].get("encoder", "graph")
        except CheckpointError as exc:
            found, why = None, f" --checkpoint cannot serve it: {exc}"
        if found == encoder:
            return str(checkpoint)
        if found is not None:
            why = (f" --checkpoint {checkpoint} holds a {found}-encoder network (the `tapfinger` policy's), not an "
                   f"{encoder}-encoder one, so it is not used for {name!r}.")
    stem = f"{scenario.name}{CHECKPOINT_NAMES[name]}"
    path = shipped_checkpoint(stem)
    if path is None:
        raise ValueError(f"no checkpoint {stem}.pt ships for policy {name!r} on scenario {scenario.name!r}, and no "
                         f"--checkpoint of an {encoder}-encoder network was given.{why} Fix: train one (`tapfinger "
                         f"train --encoder {encoder}`) and pass it with --checkpoint, or save it as "
                         f"checkpoints/{stem}.pt.")
    return str(path)


def has_deadline_settings(scenario: Scenario) -> bool:
    """Whether a scenario is one the deadline-aware baselines are for (deadlines, declines or a cloud tier)."""
    return (scenario.deadlines.rule != "none" or scenario.allow_decline
            or any(c.kind == "cloud" for c in scenario.clusters))


def demo_policies(scenario_name: str) -> list[str]:
    """The default comparison: the learned policy when a checkpoint ships for the scenario, the demo's
    heuristics, and on a deadline scenario the deadline-aware baselines (`DEADLINE_HEURISTICS`)."""
    from tapfinger.sim.scenario import load_scenario

    names = [n for n in DEMO_HEURISTICS if n in POLICIES]
    if has_deadline_settings(load_scenario(scenario_name, resolve_files=False)):
        names = [n for n in DEADLINE_HEURISTICS if n in POLICIES] + names
    if "tapfinger" in POLICIES and shipped_checkpoint(scenario_name) is not None:
        names.insert(0, "tapfinger")
    return names
