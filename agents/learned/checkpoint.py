"""Checkpoints: written atomically with their metadata, loaded with `weights_only=True`, and
refused with a clear message when they come from another scenario or model configuration."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from agents.learned.model import ModelConfig, TapFingerNet
from tapfinger import __version__
from tapfinger.sim.scenario import FINGERPRINT_COVERS, Scenario, scenario_fingerprint

FORMAT = "tapfinger-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint cannot be used: missing, corrupted, or made for something else."""


def library_versions() -> dict[str, str]:
    import numpy
    import torch_geometric

    # str(): torch.__version__ is a TorchVersion object, which weights_only loading refuses
    return {"tapfinger": __version__, "torch": str(torch.__version__),
            "torch_geometric": str(torch_geometric.__version__), "numpy": str(numpy.__version__),
            "python": platform.python_version()}


def save_checkpoint(path: str | Path, *, net: TapFingerNet, scenario: Scenario, acting: dict, step: int,
                    extra: dict | None = None) -> Path:
    """Write atomically (temp file + rename): an interrupted save never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "scenario": scenario.name,
        "scenario_fingerprint": scenario_fingerprint(scenario),
        "model_config": net.cfg.to_dict(),
        "acting": dict(acting),
        "model_state": net.state_dict(),
        "step": int(step),
        "versions": library_versions(),
    }
    payload.update(extra or {})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


@dataclass
class LoadedCheckpoint:
    net: TapFingerNet
    payload: dict
    acting: dict

    @property
    def step(self) -> int:
        return int(self.payload["step"])


def read_payload(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist. Fix: give the path of a file written by "
                              f"`tapfinger train` (its run folder holds checkpoint.pt).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        text = str(exc)
        reason = next((line.strip() for line in text.splitlines() if "Unsupported global" in line), text[:160])
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(exc).__name__}: {reason}); it is "
                              f"corrupted, truncated or not a TapFinger checkpoint. Fix: use another checkpoint "
                              f"or retrain.") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} file. Fix: use a checkpoint written by "
                              f"`tapfinger train` of this version.")
    return payload


def stored_model_config(stored: dict, path: str | Path) -> ModelConfig:
    """The ModelConfig of a checkpoint. Fields a later version dropped load when they hold nothing
    (the shipped checkpoints carry an empty `extra`); any other unknown field is refused."""
    known = {f.name for f in fields(ModelConfig)}
    unknown = {k: v for k, v in stored.items() if k not in known}
    if any(unknown.values()):
        raise CheckpointError(f"checkpoint {path} has model options this version does not know ({unknown}). "
                              f"Fix: use the tapfinger version that wrote it, or retrain.")
    return ModelConfig(**{k: v for k, v in stored.items() if k in known})


def load_checkpoint(path: str | Path, scenario: Scenario | None = None,
                    expect_config: ModelConfig | None = None) -> LoadedCheckpoint:
    payload = read_payload(path)
    if scenario is not None and payload["scenario_fingerprint"] != scenario_fingerprint(scenario):
        raise CheckpointError(
            f"checkpoint {path} was trained on scenario '{payload['scenario']}' (fingerprint "
            f"{payload['scenario_fingerprint']}), which differs from this '{scenario.name}' (fingerprint "
            f"{scenario_fingerprint(scenario)}) in one of: {FINGERPRINT_COVERS}. Fix: evaluate it on "
            f"'{payload['scenario']}', or train a policy for '{scenario.name}' with `tapfinger train "
            f"--scenario {scenario.name}`.")
    cfg = stored_model_config(payload["model_config"], path)
    if expect_config is not None and cfg != expect_config:
        diff = {k: (v, getattr(expect_config, k)) for k, v in cfg.to_dict().items()
                if getattr(expect_config, k) != v}
        raise CheckpointError(f"checkpoint {path} has another model configuration (checkpoint vs asked: {diff}). "
                              f"Fix: use the same model flags as the run that wrote it, or start a new run folder.")
    net = TapFingerNet(cfg)
    try:
        net.load_state_dict(payload["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model ({str(exc)[:200]}). Fix: use a "
                              f"checkpoint written by this version of tapfinger.") from None
    return LoadedCheckpoint(net, payload, payload.get("acting", {}))
