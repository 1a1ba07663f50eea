"""The files a profile run writes: the CSV of measurements and its `.json` sidecar.

The CSV is `task,cpus,gpus,seconds,peak_mem_mb,<extra columns>`, read by
`tapfinger.sim.progress.read_profile`. Rows are appended and flushed one at a time, so that an
interrupted run resumes (`existing_rows` counts what is already there). The sidecar describes
the machine and the parameters; a resumed run must match them (`check_resume`), or its rows
would not be comparable.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from tapfinger.testbed.errors import ProfilerError
from tapfinger.testbed.measurement import Job

# Columns of the CSV. The first four are the testbed schema (tapfinger-testbed/README.md);
# `peak_mem_mb` is read by `read_profile`; the rest are for people and later analyses.
CSV_COLUMNS = ("task", "cpus", "gpus", "seconds", "peak_mem_mb", "gpu_mem_mb", "step_seconds",
               "steps", "samples", "batch_size", "setup_seconds", "contention", "model")
# What each extra column means, written into the sidecar for whoever reads the CSV later.
COLUMN_MEANINGS = {
    "seconds": "wall time of `samples` training samples after `warmup` untimed steps",
    "peak_mem_mb": "peak resident host memory of the measuring process (VmHWM), MiB",
    "gpu_mem_mb": "peak torch.cuda.max_memory_allocated over the devices used, MiB",
    "step_seconds": "median time of one optimisation step",
    "steps": "timed steps (ceil(samples / batch_size))",
    "setup_seconds": "process start to first timed step (python + torch import, model build, warm-up)",
    "contention": "share of the pinned CPUs' time used by other processes during the timed "
                  "steps (0 = undisturbed; rows above --max-contention were re-measured)",
}


def existing_rows(out: Path) -> dict[tuple[str, int, int], int]:
    """How many rows each (task, cpus, gpus) already has in `out` (resume)."""
    if not out.exists() or out.stat().st_size == 0:
        return {}
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    if not rows or tuple(h.strip() for h in rows[0]) != CSV_COLUMNS:
        raise ProfilerError(f"{out} exists but is not a `tapfinger profile` output (its header is not "
                            f"{','.join(CSV_COLUMNS)}). Fix: choose another --out, or delete the file")
    counts: dict[tuple[str, int, int], int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(CSV_COLUMNS):
            # Only the last line can be cut short by an interruption; anything else is damage.
            raise ProfilerError(f"{out}, line {lineno}: {len(row)} columns instead of {len(CSV_COLUMNS)} "
                                f"(an interrupted write?). Fix: delete that line and run again to re-measure it")
        key = (row[0], int(row[1]), int(row[2]))
        counts[key] = counts.get(key, 0) + 1
    return counts


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def sidecar_path(out: str | Path) -> Path:
    """The machine/parameters description next to a profile: F.csv -> F.json."""
    return Path(out).with_suffix(".json")


def _read_sidecar(out: Path) -> dict[str, Any]:
    side = sidecar_path(out)
    if not side.exists():
        return {}
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as exc:
        raise ProfilerError(f"{side} is not valid JSON ({exc}). Fix: delete it (it is rewritten) or "
                            f"choose another --out") from None


def write_sidecar(out: Path, parameters: dict[str, Any], machine: dict[str, Any], notes: list[str],
                  argv: list[str] | None) -> None:
    """Describe the machine and the parameters; a resumed or extended run adds to it."""
    previous = _read_sidecar(out)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    params = dict(parameters)
    # The file may have been extended by several runs (more models, more CPU counts): keep
    # every model's configuration and every command line that wrote into it.
    params["models"] = {**previous.get("parameters", {}).get("models", {}), **params["models"]}
    commands = list(previous.get("commands", []))
    if argv is not None and argv not in commands:
        commands.append(argv)
    doc = {
        "profile": out.name,
        "created": previous.get("created", now),
        "updated": now,
        "machine": machine,
        "parameters": params,
        "commands": commands,
        "notes": sorted(set(previous.get("notes", [])) | set(notes)),
        "columns": COLUMN_MEANINGS,
    }
    sidecar_path(out).write_text(json.dumps(doc, indent=2) + "\n")


def check_resume(out: Path, parameters: dict[str, Any], machine: dict[str, Any]) -> None:
    """Rows of one file must be comparable: same work, warm-up, seed, model shapes, machine."""
    prev = _read_sidecar(out)
    if not prev:
        return
    old = prev.get("parameters", {})
    new = json.loads(json.dumps(parameters))  # tuples -> lists, as stored
    for key in ("samples", "warmup", "seed"):
        if key in old and old[key] != new[key]:
            raise ProfilerError(f"{out} was measured with --{key} {old[key]}, this run asks for "
                                f"{new[key]}; rows would not be comparable. Fix: resume with --{key} "
                                f"{old[key]}, or write to another --out")
    for name, cfg in new["models"].items():
        if name in old.get("models", {}) and old["models"][name] != cfg:
            raise ProfilerError(f"{out}: model {name!r} was measured with another configuration "
                                f"({old['models'][name]}); rows would not be comparable. Fix: write to "
                                f"another --out")
    old_cpu = prev.get("machine", {}).get("cpu_model")
    if old_cpu and old_cpu != machine["cpu_model"]:
        raise ProfilerError(f"{out} was measured on a {old_cpu!r}, this machine is a "
                            f"{machine['cpu_model']!r}. Fix: write to another --out")


def profile_row(job: Job, res: dict[str, Any]) -> dict[str, Any]:
    """The CSV row of one measurement: the job's allocation and the worker's result."""
    return {"task": job.task, "cpus": job.cpus, "gpus": job.gpus, "seconds": res["seconds"],
            "peak_mem_mb": res["peak_mem_mb"], "gpu_mem_mb": res.get("gpu_mem_mb"),
            "step_seconds": res["step_seconds"], "steps": res["steps"], "samples": res["samples"],
            "batch_size": job.batch_size, "setup_seconds": res.get("setup_seconds"),
            "contention": res.get("contention"), "model": job.model}


class RowAppender:
    """Appends rows to a profile CSV (the header first when the file is new), each flushed to
    disk at once: a row on disk is a row that an interrupted run will not redo."""

    def __init__(self, out: Path):
        self.out = out
        self._fh: Any = None

    def __enter__(self) -> "RowAppender":
        new_file = not self.out.exists() or self.out.stat().st_size == 0
        self._fh = self.out.open("a", newline="")
        self._writer = csv.writer(self._fh)
        if new_file:
            self._writer.writerow(CSV_COLUMNS)
            self._fh.flush()
        return self

    def append(self, row: dict[str, Any]) -> None:
        self._writer.writerow([_format(row[c]) for c in CSV_COLUMNS])
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._fh.close()
