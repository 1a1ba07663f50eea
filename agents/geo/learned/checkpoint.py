"""Checkpoints of `tapfinger-geo`: a dict of tensors and plain values written with `torch.save`
(atomically), read with `torch.load(weights_only=True)`, so a file that holds code is refused
unrun. A foreign, edited or diverged file is refused with a `CheckpointError` naming the problem
and the fix: no marker, missing keys, another scenario, another policy layout (the fingerprint of
what the network's inputs and outputs depend on), weights that do not fit, non-finite weights."""

from __future__ import annotations

import hashlib
import json
from dataclasses import fields
from pathlib import Path

import torch

from agents.geo.learned.model import GeoNet, GeoNetConfig
from agents.learned.checkpoint import CheckpointError, _nonfinite, _unreadable, library_versions, save_atomically
from envs.geo_graph import EDGE_ATTR_COLUMNS, EDGE_TYPES, feature_columns
from tapfinger.sim.geo.model import GeoScenario

FORMAT = "tapfinger-geo-checkpoint-1"
REQUIRED = {"scenario": str, "fingerprint": str, "fingerprint_parts": dict, "model_config": dict,
            "model_state": dict, "teacher": str}
RETRAIN = "Fix: use another checkpoint (a run folder's best.pt, or the shipped checkpoints/geo/<scenario>.pt), or retrain " \
          "with `python scripts/train_geo.py`."
__all__ = ["CheckpointError", "FORMAT", "save_geo_checkpoint", "load_geo_checkpoint", "fingerprint_parts"]


def fingerprint_parts(scenario: GeoScenario) -> dict:
    """What the network's shapes and the meaning of its inputs depend on (plain values)."""
    return {"resources": list(scenario.resources), "num_sites": scenario.num_sites, "window": scenario.window,
            "max_workers_per_site": scenario.max_workers_per_site,
            "feature_columns": feature_columns(scenario.resources),
            "edge_attr_columns": {k: list(v) for k, v in EDGE_ATTR_COLUMNS.items()},
            "edge_types": [list(et) for et in EDGE_TYPES]}


def fingerprint(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def save_geo_checkpoint(path: str | Path, net: GeoNet, scenario: GeoScenario, teacher: str,
                        extra: dict | None = None) -> Path:
    """Write atomically (temp file + rename): an interrupted save never leaves a broken file."""
    path = Path(path)
    parts = fingerprint_parts(scenario)
    payload = {"format": FORMAT, "scenario": scenario.name, "fingerprint": fingerprint(parts),
               "fingerprint_parts": parts, "model_config": net.cfg.to_dict(), "teacher": teacher,
               "model_state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
               "versions": library_versions()}
    payload.update(extra or {})
    return save_atomically(payload, path)


def read_geo_payload(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"geo checkpoint {path} does not exist{' (it is a directory)' if path.is_dir() else ''}. "
                              f"Fix: give a file written by `python scripts/train_geo.py` (RUN_DIR/best.pt), or ship "
                              f"one as checkpoints/geo/<scenario>.pt.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign, truncated or code-holding files
        raise _unreadable(path, exc) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} file (its format marker is {found!r}). Fix: "
                              f"give a checkpoint written by `python scripts/train_geo.py` (an edge checkpoint of "
                              f"`tapfinger train` is for the edge `tapfinger` policy).")
    for key, kind in REQUIRED.items():
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"checkpoint {path} has the {FORMAT} marker but its '{key}' is "
                                  f"{'missing' if key not in payload else type(payload[key]).__name__}, not a "
                                  f"{kind.__name__}: it was not written whole, or was edited. {RETRAIN}")
    from agents.geo.registry import GEO_POLICY_NAMES  # the teacher is built by name: only a heuristic

    if payload["teacher"] not in GEO_POLICY_NAMES:
        raise CheckpointError(f"checkpoint {path}: its teacher {payload['teacher']!r} is not a geo heuristic "
                              f"({', '.join(GEO_POLICY_NAMES)}): it was edited or written by something else. {RETRAIN}")
    return payload


def _check_scenario(path: Path, payload: dict, scenario: GeoScenario) -> None:
    if payload["scenario"] != scenario.name:
        raise CheckpointError(f"checkpoint {path} was trained on geo scenario '{payload['scenario']}', not "
                              f"'{scenario.name}' (its sites, costs and jobs differ). Fix: evaluate it on "
                              f"'{payload['scenario']}', or train one with `python scripts/train_geo.py --scenario "
                              f"{scenario.name}`.")
    parts = fingerprint_parts(scenario)
    if payload["fingerprint"] != fingerprint(parts) or payload["fingerprint_parts"] != parts:
        stored = payload["fingerprint_parts"]
        diff = [k for k in parts if stored.get(k) != parts[k]] or ["the fingerprint itself"]
        raise CheckpointError(f"checkpoint {path} was made for another policy layout of '{scenario.name}': "
                              f"{', '.join(diff)} differ (stored {[stored.get(k) for k in diff]}). Fix: retrain "
                              f"with `python scripts/train_geo.py --scenario {scenario.name}`.")


def _config(path: Path, stored: dict) -> GeoNetConfig:
    known = {f.name: f for f in fields(GeoNetConfig)}
    unknown = sorted(set(stored) - set(known))
    bad = [k for k, v in stored.items() if k in known and not isinstance(v, (int, bool))]
    if unknown or bad or any(k not in stored for k in ("num_sites", "num_resources", "max_workers", "window")):
        raise CheckpointError(f"checkpoint {path}: its model_config {stored!r} is not a GeoNetConfig (unknown "
                              f"{unknown}, mistyped {bad}). {RETRAIN}")
    return GeoNetConfig(**stored)


def load_geo_checkpoint(path: str | Path, scenario: GeoScenario | None = None) -> tuple[GeoNet, dict]:
    """(the network, the payload); `scenario` given: refused unless the checkpoint was made for it."""
    path = Path(path)
    payload = read_geo_payload(path)
    if scenario is not None:
        _check_scenario(path, payload, scenario)
    cfg = _config(path, payload["model_config"])
    refusal = _nonfinite(path, payload["model_state"])
    if refusal:
        raise refusal
    try:
        net = GeoNet(cfg)
    except (ArithmeticError, AssertionError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {path}: its model_config builds no network ({exc}). {RETRAIN}") from None
    want, state = net.state_dict(), payload["model_state"]
    wrong = sorted(set(want) ^ set(state)) + sorted(k for k in set(want) & set(state)
                                                    if not isinstance(state[k], torch.Tensor)
                                                    or state[k].shape != want[k].shape)
    if wrong:
        raise CheckpointError(f"checkpoint {path}: its weights do not fit its model ({len(wrong)} tensors missing, "
                              f"extra or of another shape, e.g. '{wrong[0]}'). {RETRAIN}")
    net.load_state_dict(state)
    net.eval()
    return net, payload
