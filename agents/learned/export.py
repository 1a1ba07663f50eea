"""`tapfinger export`: write a trained TapFinger network as a program with a plain-tensor interface.

The pieces: `agents.learned.plain_encoder` (the encoder without data-dependent control flow,
the reason the model is not exported as it is), `agents.learned.export_program` (the program
module and its tracing with `torch.export`), `agents.learned.export_verify` (the written file
against the eager model on real rounds); this module writes the files (atomically, with their
metadata) and is the entry point. The interface itself is `agents.export_format`, shared with
the runtime (`agents.exported`).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from agents.export_format import (ACTING_KEYS, FORMAT, METADATA_KEY, PT2_EXTRA_FILE, ExportError,
                                  expected_layout, stored_parts)
from agents.learned.checkpoint import (load_checkpoint, read_payload, remove_stale_temps, scenario_fingerprint,
                                       temp_path)
from agents.learned.export_program import export_program
from agents.learned.export_verify import sample_rounds, verify_export
from agents.learned.model import ModelConfig
from tapfinger import __version__
from tapfinger.sim.scenario import Scenario

__all__ = ["FORMATS", "ExportError", "ExportResult", "export_checkpoint", "export_files"]

FORMATS = ("onnx", "pt2")
ONNX_OPSET = 18  # ScatterElements with reduction="max" needs 18


# --------------------------------------------------------------------------- writing files
def export_metadata(scenario: Scenario, cfg: ModelConfig, acting: dict, fmt: str, checkpoint: Path,
                    payload: dict) -> dict:
    return {
        "format": FORMAT,
        "scenario": scenario.name,
        "scenario_fingerprint": scenario_fingerprint(scenario),
        "scenario_parts": stored_parts(scenario),  # so that a refusal can say what differs
        "feature_layout": expected_layout(scenario, cfg.greedy_hint, cfg.decline, cfg.node_faults),
        "acting": {k: acting[k] for k in ACTING_KEYS if k in acting},
        "decline": bool(cfg.decline),  # whether the policy declines tasks (admission control)
        "node_faults": bool(cfg.node_faults),  # whether it reads node health and speed (envs.graph)
        "model_config": cfg.to_dict(),
        "tapfinger_version": __version__,
        "program": {"format": fmt, "torch": str(torch.__version__),
                    "onnx_opset": ONNX_OPSET if fmt == "onnx" else None,
                    "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "checkpoint": {"file": checkpoint.name, "step": int(payload.get("step", 0)),
                       "versions": payload.get("versions", {})},
    }


def _tmp_path(out: Path, suffix: str) -> Path:
    # `.NAME.tmp-PID.SUFFIX`: torch.export.save wants a name ending in .pt2; one a SIGKILLed export
    # left behind is removed by the next export to the same place (`remove_stale_temps`).
    return temp_path(out, suffix)


def write_pt2(program: torch.export.ExportedProgram, out: Path, meta: dict) -> Path:
    tmp = _tmp_path(out, ".pt2")
    torch.export.save(program, str(tmp), extra_files={PT2_EXTRA_FILE: json.dumps(meta)})
    return tmp


def write_onnx(program: torch.export.ExportedProgram, out: Path, meta: dict) -> Path:
    names = meta["feature_layout"]["inputs"]  # the interface the program was traced with
    outputs = meta["feature_layout"]["outputs"]
    import warnings

    tmp = _tmp_path(out, ".onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and opset notes
        onnx_program = torch.onnx.export(program, dynamo=True, opset_version=ONNX_OPSET,
                                         input_names=list(names), output_names=list(outputs),
                                         verbose=False)
    props = onnx_program.model.metadata_props
    props[METADATA_KEY] = json.dumps(meta)
    # flat copies for tools that show metadata_props (Netron, onnx.load)
    props["tapfinger_scenario"] = meta["scenario"]
    props["tapfinger_scenario_fingerprint"] = meta["scenario_fingerprint"]
    props["tapfinger_version"] = meta["tapfinger_version"]
    onnx_program.save(str(tmp), external_data=False)
    return tmp


def _check_out(out: Path, fmt: str) -> None:
    """Refuse an output place that cannot take the file before any work is done."""
    if out.is_dir():
        raise ExportError(f"--out {out} is a directory. Fix: give a file name, e.g. {out / ('policy.' + fmt)}.")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise ExportError(f"--out {out}: {blocking} is a file, not a folder. Fix: choose another --out.")


# --------------------------------------------------------------------------- entry point
@dataclass
class ExportResult:
    path: Path
    metadata: dict
    verified_rounds: int


def export_checkpoint(checkpoint: str | Path, out: str | Path, fmt: str, scenario: Scenario | None = None,
                      verify: bool = True) -> ExportResult:
    """Load a checkpoint, export it to `out` (written atomically), and check the file against the eager model."""
    return export_files(checkpoint, {fmt: out}, scenario=scenario, verify=verify)[0]


def export_files(checkpoint: str | Path, outs: dict[str, str | Path], scenario: Scenario | None = None,
                 verify: bool = True) -> list[ExportResult]:
    """`export_checkpoint` for several formats ({"onnx": path, "pt2": path}) from one traced program."""
    from tapfinger.sim.scenario import ScenarioError, load_scenario

    for fmt, out in outs.items():
        if fmt not in FORMATS:
            raise ExportError(f"unknown export format {fmt!r}. Fix: use one of {', '.join(FORMATS)}.")
        _check_out(Path(out), fmt)
    checkpoint = Path(checkpoint)
    payload = read_payload(checkpoint)
    if scenario is None:
        try:
            scenario = load_scenario(payload["scenario"])
        except (ScenarioError, FileNotFoundError, ValueError):
            raise ExportError(f"checkpoint {checkpoint} was trained on scenario '{payload['scenario']}', which is not "
                              f"a built-in name. Fix: pass --scenario FILE.toml (the scenario it was trained on).") from None
    ckpt = load_checkpoint(checkpoint, scenario)
    net = ckpt.net.eval()
    acting = {"multi_task": False, "max_sequence": 4, "bayes": True, "pointer": True, **ckpt.acting}
    if not acting["pointer"]:
        raise ExportError(f"checkpoint {checkpoint} acts with the pointer ablation (pointer=False): it draws its task "
                          f"uniformly at random even when greedy, which a greedy program cannot reproduce. Fix: "
                          f"evaluate it as the policy `tapfinger` with --checkpoint {checkpoint}.")
    try:
        program = export_program(net, pointer=bool(acting["pointer"]))
    except Exception as exc:
        raise ExportError(f"tracing {checkpoint} with torch.export failed ({type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:300]}). Fix: report it with the checkpoint; use the "
                          f"checkpoint itself (policy `tapfinger`) meanwhile.") from exc
    rounds = sample_rounds(scenario, net, acting) if verify else []
    results = []
    for fmt, out in outs.items():
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out, f".{fmt}")
        meta = export_metadata(scenario, net.cfg, acting, fmt, checkpoint, payload)
        tmp = _tmp_path(out, f".{fmt}")
        try:  # the temporary file goes on any failure or Ctrl-C (only a SIGKILL leaves it)
            try:
                (write_onnx if fmt == "onnx" else write_pt2)(program, out, meta)  # to `tmp`
            except Exception as exc:
                raise ExportError(f"writing {checkpoint} as {fmt} failed ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:300]}). Fix: try the other format.") from exc
            if verify:
                verify_export(tmp, fmt, scenario, net, acting, rounds)
            os.replace(tmp, out)
        finally:
            if tmp.exists():
                tmp.unlink()
        results.append(ExportResult(out, meta, len(rounds)))
    return results
