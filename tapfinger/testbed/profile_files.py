"""The files a profile run writes: the CSV of measurements and its `.json` sidecar.

The CSV is `task,cpus,gpus,seconds,peak_mem_mb,<extra columns>`, read by
`tapfinger.sim.progress.read_profile`. Rows are appended and flushed one at a time, so that an
interrupted run resumes (`existing_rows` counts what is already there). The sidecar describes
the machine and the parameters; a resumed run must match them (`check_resume`), or its rows
would not be comparable. `check_out` refuses, before anything runs, an output that cannot be
written or would replace a file that `tapfinger profile` did not write (unless --force).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import os
from pathlib import Path
from types import TracebackType
from typing import Any

from tapfinger.sim.textfile import read_text
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


# The keys every sidecar this module writes has: a JSON file without them is someone else's.
SIDECAR_KEYS = ("profile", "machine", "parameters", "columns")


def _read_rows(out: Path) -> list[list[str]]:
    """The CSV's rows (UTF-8; a byte-order mark from a spreadsheet is ignored)."""
    text = read_text(out, "", ProfilerError, fix_missing="choose another --out",
                     fix_encoding="choose another --out (this is not a `tapfinger profile` output), or add "
                                  "--force to replace it")
    return list(csv.reader(io.StringIO(text, newline="")))


def _is_profile_csv(rows: list[list[str]]) -> bool:
    return bool(rows) and tuple(h.strip() for h in rows[0]) == CSV_COLUMNS


def existing_rows(out: Path) -> dict[tuple[str, int, int], int]:
    """How many rows each (task, cpus, gpus) already has in `out` (resume)."""
    if not out.exists() or out.stat().st_size == 0:
        return {}
    rows = _read_rows(out)
    if not _is_profile_csv(rows):
        raise ProfilerError(f"{out} exists but is not a `tapfinger profile` output (its header is not "
                            f"{','.join(CSV_COLUMNS)}). Fix: choose another --out, or add --force to replace it")
    counts: dict[tuple[str, int, int], int] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(CSV_COLUMNS):
            # Only the last line can be cut short by an interruption; anything else is damage.
            raise ProfilerError(f"{out}, line {lineno}: {len(row)} columns instead of {len(CSV_COLUMNS)} "
                                f"(an interrupted write?). Fix: delete that line and run again to re-measure it")
        try:
            key = (row[0], int(row[1]), int(row[2]))
        except ValueError:
            raise ProfilerError(f"{out}, line {lineno}: cpus and gpus must be integers, got {row[1:3]}. Fix: "
                                f"delete that line and run again to re-measure it") from None
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
    problem = _foreign_sidecar(side)
    if problem:
        raise ProfilerError(f"{side} {problem}, so it was not written by `tapfinger profile`. Fix: choose "
                            f"another --out (the sidecar is OUT with .json), or add --force to replace it")
    return json.loads(side.read_text(encoding="utf-8"))


def _foreign_sidecar(side: Path) -> str:
    """Why `side` is not a sidecar this module wrote ("" when it is one)."""
    try:
        doc = json.loads(side.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"is not JSON ({exc})"
    if not isinstance(doc, dict) or not all(k in doc for k in SIDECAR_KEYS):
        return f"lacks the keys a profile sidecar has ({', '.join(SIDECAR_KEYS)})"
    return ""


def check_out(out: Path, force: bool) -> list[Path]:
    """Refuse an output that cannot be written, whose sidecar is itself, or (without `force`) that
    would replace a CSV or JSON file not written by `tapfinger profile`. Returns those files,
    which the caller removes once the request is known to be good (with `force`)."""
    side = sidecar_path(out)
    if side == out:
        raise ProfilerError(f"--out {out}: its sidecar (OUT with .json) is the same file, so one would "
                            f"overwrite the other. Fix: give the profile a .csv name, e.g. --out {out.with_suffix('.csv')}")
    for path in (out, side):
        if path.is_dir():
            raise ProfilerError(f"--out {out}: {path} is a directory. Fix: give a file path such as "
                                f"{path / 'profile.csv'}")
    parent = next((p for p in out.absolute().parents if p.exists()), Path("/"))
    if not parent.is_dir():
        raise ProfilerError(f"--out {out}: {parent} is a file, not a directory. Fix: choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ProfilerError(f"--out {out}: {parent} is not writable. Fix: choose a writable place")
    foreign = []
    if out.exists() and out.stat().st_size > 0 and not _is_profile_csv(_rows_or_none(out)):
        foreign.append((out, f"is not a `tapfinger profile` output (its first line is not {','.join(CSV_COLUMNS)})"))
    if side.exists() and _foreign_sidecar(side):
        foreign.append((side, f"{_foreign_sidecar(side)}: not written by `tapfinger profile`"))
    if foreign and not force:
        path, why = foreign[0]
        raise ProfilerError(f"{path} exists and {why}; this run would replace it. Fix: choose another "
                            f"--out (the sidecar is OUT with .json), or add --force to replace it")
    return [path for path, _ in foreign]


def _rows_or_none(out: Path) -> list[list[str]]:
    try:
        return _read_rows(out)
    except ProfilerError:
        return []  # not UTF-8: not a profile output


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
    # Renamed into place, so that an interrupted write never leaves half a sidecar.
    side = sidecar_path(out)
    tmp = side.with_name(f".{side.name}.tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, side)
    finally:
        tmp.unlink(missing_ok=True)


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
        self._fh = self.out.open("a", newline="", encoding="utf-8")
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
