"""Checkpoints: written atomically with their metadata, loaded with `weights_only=True`, and
refused with a clear message when they are damaged or incomplete, hold non-finite weights, or
come from another scenario (saying what differs) or model configuration."""

from __future__ import annotations

import glob
import os
import platform
import re
import zipfile
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch

from agents.export_format import fingerprint_difference, stored_parts
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


def temp_path(path: Path, suffix: str = "") -> Path:
    """Where a file is written before it is renamed to `path`: `.NAME.tmp-PID` beside it, so that
    one left by a killed process (SIGKILL cannot be caught) is recognisable, and
    `remove_stale_temps` removes it on the next write to the same place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{suffix}")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(path: Path, suffix: str = "") -> list[Path]:
    """Remove the temporary files of writes to `path` by processes that no longer run (this
    version's `.NAME.tmp-PID` and the `.NAME.PID.tmp` of earlier ones); a live process's file is
    left alone: it may still be writing. Returns what was removed."""
    pattern = re.compile(re.escape(f".{path.name}.") + r"(?:tmp-(\d+)|(\d+)\.tmp)" + re.escape(suffix))
    removed = []
    for cand in path.parent.glob(f".{glob.escape(path.name)}.*"):
        m = pattern.fullmatch(cand.name)
        if m and cand.is_file() and not _alive(int(m.group(1) or m.group(2))):
            try:
                cand.unlink()
                removed.append(cand)
            except OSError:  # gone meanwhile, or not ours to remove: leave it
                pass
    return removed


def save_checkpoint(path: str | Path, *, net: TapFingerNet, scenario: Scenario, acting: dict, step: int,
                    extra: dict | None = None) -> Path:
    """Write atomically (temp file + rename): an interrupted save never leaves a broken file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "scenario": scenario.name,
        "scenario_fingerprint": scenario_fingerprint(scenario),
        # what the fingerprint covers, part by part: a refusal can then say what differs
        "scenario_parts": stored_parts(scenario),
        "model_config": net.cfg.to_dict(),
        "acting": dict(acting),
        "model_state": net.state_dict(),
        "step": int(step),
        "versions": library_versions(),
    }
    payload.update(extra or {})
    return save_atomically(payload, path)


def save_atomically(payload: dict, path: Path) -> Path:
    """torch.save through a temp file and a rename (stale temps of killed saves removed first): an
    interrupted save never leaves a broken file. The edge and geo checkpoints both go through here."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = temp_path(path)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


@dataclass
class LoadedCheckpoint:
    net: TapFingerNet
    payload: dict
    acting: dict

    @property
    def step(self) -> int:
        return int(self.payload["step"])


REQUIRED = {"scenario": str, "scenario_fingerprint": str, "model_config": dict, "model_state": dict}
RETRAIN = "Fix: use another checkpoint (a run folder's best.pt, or an earlier copy), or retrain."


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """A whole sentence on why torch could not read the file (torch's own text is long and its
    useful part varies)."""
    text = str(exc)
    refused = next((line.strip() for line in text.splitlines() if "Unsupported global" in line), None)
    if refused:
        why = (f"it holds a Python object that is not a tensor or plain value ({refused.rstrip('.')}), which "
               f"loading would have to run; it was refused unrun")
    elif not zipfile.is_zipfile(path):
        why = "it is truncated or is not a zip archive (checkpoints written by torch.save are zip archives)"
    else:
        why = f"it is a zip archive but not a readable torch checkpoint ({type(exc).__name__})"
    return CheckpointError(f"checkpoint {path} cannot be read: {why}. It is corrupted, truncated or not a "
                           f"TapFinger checkpoint. {RETRAIN}")


def read_payload(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        inside = [p for p in (path / "checkpoint.pt", path / "best.pt") if p.is_file()]
        hint = f"give the file itself: {inside[0]}" if inside else "give the checkpoint file (a run folder holds checkpoint.pt)"
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file. Fix: {hint}.")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist. Fix: give the path of a file written by "
                              f"`tapfinger train` (its run folder holds checkpoint.pt).")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated or foreign files
        raise _unreadable(path, exc) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} file. Fix: use a checkpoint written by "
                              f"`tapfinger train` of this version.")
    missing = sorted(k for k in REQUIRED if k not in payload)
    if missing:
        raise CheckpointError(f"checkpoint {path} has the {FORMAT} marker but lacks the keys {missing}: it was not "
                              f"written whole by `tapfinger train`, or was edited. {RETRAIN}")
    for key, kind in REQUIRED.items():
        if not isinstance(payload[key], kind):
            raise CheckpointError(f"checkpoint {path}: '{key}' is a {type(payload[key]).__name__}, not a "
                                  f"{kind.__name__}. {RETRAIN}")
    return payload


# ModelConfig's field types (annotations are strings here: `from __future__ import annotations`)
FIELD_CHECKS = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool), "str": lambda v: isinstance(v, str),
                "list[int]": lambda v: isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool)
                                                                   for x in v)}


def stored_model_config(stored: dict, path: str | Path) -> ModelConfig:
    """The ModelConfig of a checkpoint. Fields a later version dropped load when they hold nothing
    (the shipped checkpoints carry an empty `extra`); any other unknown field is refused, and so
    are missing and mistyped ones."""
    known = {f.name: f for f in fields(ModelConfig)}
    unknown = {k: v for k, v in stored.items() if k not in known}
    if any(unknown.values()):
        raise CheckpointError(f"checkpoint {path} has model options this version does not know ({unknown}). "
                              f"Fix: use the tapfinger version that wrote it, or retrain.")
    missing = sorted(k for k, f in known.items() if k not in stored and f.default is MISSING)
    if missing:
        raise CheckpointError(f"checkpoint {path}: its model_config lacks {missing}. {RETRAIN}")
    for k, v in stored.items():
        check = FIELD_CHECKS.get(str(known[k].type)) if k in known else None
        if check is not None and not check(v):
            raise CheckpointError(f"checkpoint {path}: its model_config '{k}' is {v!r} ({type(v).__name__}), not "
                                  f"an {known[k].type}. {RETRAIN}")
    return ModelConfig(**{k: v for k, v in stored.items() if k in known})


def _nonfinite(path, state: dict) -> CheckpointError | None:
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point()}
    bad = {k: n for k, n in bad.items() if n}
    if not bad:
        return None
    total = sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor) and v.is_floating_point())
    tensors = f"{len(bad)} tensor{'s' if len(bad) > 1 else ''}, e.g. '{next(iter(bad))}'"
    return CheckpointError(
        f"checkpoint {path} has {sum(bad.values()):,} non-finite parameter value{'s' if sum(bad.values()) > 1 else ''} "
        f"(of {total:,}, in {tensors}): "
        f"the training run that wrote it diverged, and a policy of NaN weights acts on meaningless scores. Fix: "
        f"use the run's best.pt or an earlier checkpoint, or retrain with a lower --lr.")


def _build(cfg: ModelConfig, state: dict, path) -> TapFingerNet:
    try:
        net = TapFingerNet(cfg)
    except (ArithmeticError, AssertionError, TypeError, ValueError, RuntimeError) as exc:  # e.g. heads = 0
        raise CheckpointError(f"checkpoint {path}: its model_config {cfg.to_dict()} builds no network "
                              f"({type(exc).__name__}: {exc}). {RETRAIN}") from None
    want = net.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shaped = sorted(k for k in set(want) & set(state)
                    if not isinstance(state[k], torch.Tensor) or state[k].shape != want[k].shape)
    if missing or unexpected or shaped:
        what = "; ".join(f"{len(keys)} {label}, e.g. '{keys[0]}'" for label, keys in
                         (("missing", missing), ("unexpected", unexpected), ("of another shape", shaped)) if keys)
        raise CheckpointError(f"checkpoint {path}: weights do not fit the model: {what}. Fix: use a checkpoint "
                              f"written by this version of tapfinger with the model options it records.")
    net.load_state_dict(state)
    return net


def load_checkpoint(path: str | Path, scenario: Scenario | None = None,
                    expect_config: ModelConfig | None = None) -> LoadedCheckpoint:
    payload = read_payload(path)
    if scenario is not None and payload["scenario_fingerprint"] != scenario_fingerprint(scenario):
        raise CheckpointError(
            f"checkpoint {path} was trained on scenario '{payload['scenario']}' (fingerprint "
            f"{payload['scenario_fingerprint']}), which differs from this '{scenario.name}' (fingerprint "
            f"{scenario_fingerprint(scenario)}) in one of: {FINGERPRINT_COVERS}"
            f"{fingerprint_difference(payload, scenario, 'checkpoint')}. Fix: evaluate it on "
            f"'{payload['scenario']}', or train a policy for '{scenario.name}' with `tapfinger train "
            f"--scenario {scenario.name}`.")
    cfg = stored_model_config(payload["model_config"], path)
    if expect_config is not None and cfg != expect_config:
        diff = {k: (v, getattr(expect_config, k)) for k, v in cfg.to_dict().items()
                if getattr(expect_config, k) != v}
        raise CheckpointError(f"checkpoint {path} has another model configuration (checkpoint vs asked: {diff}). "
                              f"Fix: use the same model flags as the run that wrote it, or start a new run folder.")
    refusal = _nonfinite(path, payload["model_state"])
    if refusal:
        raise refusal
    return LoadedCheckpoint(_build(cfg, payload["model_state"], path), payload, payload.get("acting", {}))
