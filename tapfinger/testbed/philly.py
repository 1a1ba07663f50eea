"""The Microsoft Philly job trace as arrival traces (`tapfinger import-trace`): a window of the
trace, scaled and mapped to task types by GPU time; docs/traces.md ("Philly") documents the mapping.
A testbed tool: it writes files the simulator reads (`tapfinger.sim.traces`)."""

from __future__ import annotations

import csv
import datetime as _dt
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from tapfinger.sim.textfile import read_text
from tapfinger.sim.traces import Trace, TraceError

PHILLY_COLUMNS = ("timestamp", "duration", "num_gpus", "gpu_time")
PHILLY_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class PhillyJob:
    submitted: _dt.datetime
    duration: float
    num_gpus: int
    gpu_time: float


@dataclass(frozen=True)
class PhillyImport:
    """How Philly jobs become trace rows (see docs/traces.md, "Philly")."""

    start: _dt.datetime
    hours: float
    scale: float = 1.0  # fraction of the window's jobs kept (seeded sample without replacement)
    seed: int = 0
    types: tuple[str, ...] = ("cnn", "audio", "lm")  # lightest first
    gpu_time_edges: tuple[float, ...] = (300.0, 3600.0)  # GPU-seconds; len(types) - 1 edges
    time_scale: float = 1.0  # replay this many times faster than real time
    min_work: float = 0.25
    max_work: float = 4.0

    def check(self) -> None:
        # `not x > 0` and isfinite: NaN passes every comparison, inf overflows the window's timedelta
        if not (self.hours > 0 and math.isfinite(self.hours)):
            raise TraceError(f"--hours must be a finite number > 0, got {self.hours:g}")
        if not 0 < self.scale <= 1:
            raise TraceError(f"--scale must be in (0, 1] (the fraction of jobs kept), got {self.scale:g}")
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise TraceError(f"--time-scale must be a finite number > 0, got {self.time_scale:g}")
        if len(self.gpu_time_edges) != len(self.types) - 1:
            raise TraceError(f"{len(self.types)} task types need {len(self.types) - 1} GPU-time edges, got "
                             f"{len(self.gpu_time_edges)} ({list(self.gpu_time_edges)}). Fix: give "
                             f"--gpu-time-edges one value fewer than --types")
        edges = list(self.gpu_time_edges)
        if edges != sorted(edges) or any(not 0 < e < math.inf for e in edges):
            raise TraceError(f"--gpu-time-edges must be finite, positive and increasing, got "
                             f"{list(self.gpu_time_edges)}")
        if len(set(self.types)) != len(self.types) or not all(self.types):
            raise TraceError(f"--types must be distinct non-empty names, got {list(self.types)}")
        if not (0 < self.min_work <= self.max_work and math.isfinite(self.max_work)):
            raise TraceError(f"need 0 < --min-work <= --max-work, got {self.min_work:g} and {self.max_work:g}")


def read_philly(path: str | Path) -> list[PhillyJob]:
    """Jobs of a Philly summary CSV (header timestamp,duration,num_gpus,gpu_time[,cluster]); UTF-8,
    a leading byte-order mark ignored."""
    path = Path(path)
    text = read_text(path, "Philly trace", TraceError,
                     fix_missing="pass --philly PATH, or set TAPFINGER_SHARED_DATA to the folder holding "
                                 "philly/philly.csv",
                     fix_directory="pass --philly with the path of the job summary CSV (philly.csv)",
                     fix_encoding="give the job summary CSV as published (UTF-8 text)")
    # newline="": a quoted cell keeps its line breaks, as csv.reader expects of a file opened so
    jobs = _philly_jobs(path, csv.reader(io.StringIO(text, newline="")))
    if not jobs:
        raise TraceError(f"Philly trace {path} has no jobs")
    return jobs


def _philly_jobs(path: Path, reader: Iterator[list[str]]) -> list[PhillyJob]:
    header = [h.strip().lower() for h in next(reader, [])]
    missing = [c for c in PHILLY_COLUMNS if c not in header]
    if missing:
        raise TraceError(f"Philly trace {path}, line 1: missing column(s) {missing} (header is {header}). "
                         f"Fix: give the job summary CSV with columns {','.join(PHILLY_COLUMNS)}")
    idx = [header.index(c) for c in PHILLY_COLUMNS]
    jobs = []
    for lineno, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < len(header):
            raise TraceError(f"Philly trace {path}, line {lineno}: {len(row)} cells, the header has "
                             f"{len(header)}. Fix: repair or drop the line")
        jobs.append(_philly_job(path, lineno, [row[i].strip() for i in idx]))
    return jobs


def _philly_job(path: Path, lineno: int, cells: list[str]) -> PhillyJob:
    ts, dur, ngpu, gtime = cells
    try:
        submitted = _dt.datetime.strptime(ts, PHILLY_TIME_FORMAT)
    except ValueError:
        raise TraceError(f"Philly trace {path}, line {lineno}, column 'timestamp': {ts!r} is not "
                         f"YYYY-MM-DD HH:MM:SS. Fix: repair or drop the line") from None
    try:
        job = PhillyJob(submitted, float(dur), int(float(ngpu)), float(gtime))
        if not (math.isfinite(job.duration) and math.isfinite(job.gpu_time)):
            raise ValueError("not finite")
    except (ValueError, OverflowError):  # int(float("inf")) overflows
        raise TraceError(f"Philly trace {path}, line {lineno}: duration, num_gpus and gpu_time must be "
                         f"finite numbers, got {[dur, ngpu, gtime]}. Fix: repair or drop the line") from None
    if job.duration < 0 or job.gpu_time < 0 or job.num_gpus < 0:
        raise TraceError(f"Philly trace {path}, line {lineno}: negative duration, num_gpus or gpu_time "
                         f"({[dur, ngpu, gtime]}). Fix: repair or drop the line")
    return job


def parse_start(text: str) -> _dt.datetime:
    """'2017-10-09', '2017-10-09 08:00' or '2017-10-09T08:00:00' (the trace's own clock)."""
    try:
        return _dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise TraceError(f"--start {text!r} is not a date/time. Fix: write YYYY-MM-DD or "
                         f"'YYYY-MM-DD HH:MM[:SS]' (the Philly trace runs 2017-09-04 to 2017-12-22)") from None


def import_philly(jobs: Sequence[PhillyJob], spec: PhillyImport, source: str = "") -> Trace:
    """Philly jobs of a time window -> trace rows (mapping documented in docs/traces.md).

    - window: jobs submitted in [start, start + hours); arrival = seconds since `start`
      divided by `time_scale`;
    - scale: a seeded sample (without replacement) of round(scale × jobs in the window);
    - type: the job's GPU-time bucket (`gpu_time_edges`, GPU-seconds) picks `types[bucket]`;
    - work: duration / median duration of all the trace's jobs in the same bucket, clipped to
      [min_work, max_work], rounded to 3 decimals.

    The returned trace's comments record the source and the parameters (provenance).
    """
    spec.check()
    if spec.start.tzinfo is not None:
        raise TraceError("--start must not carry a time zone: the Philly timestamps have none")
    edges = np.asarray(spec.gpu_time_edges, dtype=np.float64)
    all_gpu_time = np.asarray([j.gpu_time for j in jobs])
    all_duration = np.asarray([j.duration for j in jobs])
    all_bucket = np.searchsorted(edges, all_gpu_time, side="right")
    # Reference duration per bucket from the whole trace, so that a job's work does not depend
    # on which window it was imported with.
    ref = np.ones(len(spec.types))
    for b in range(len(spec.types)):
        durations = all_duration[all_bucket == b]
        if durations.size and np.median(durations) > 0:
            ref[b] = float(np.median(durations))
    end = spec.start + _dt.timedelta(hours=spec.hours)
    chosen = [i for i, j in enumerate(jobs) if spec.start <= j.submitted < end]
    if not chosen:
        first = min(j.submitted for j in jobs)
        last = max(j.submitted for j in jobs)
        raise TraceError(f"no Philly job was submitted in [{spec.start}, {end}). Fix: choose --start and "
                         f"--hours inside the trace ({first} to {last})")
    keep = max(1, round(spec.scale * len(chosen)))
    rng = np.random.default_rng(spec.seed)
    picked = sorted(rng.choice(len(chosen), size=keep, replace=False).tolist()) if keep < len(chosen) \
        else list(range(len(chosen)))
    idx = np.asarray([chosen[i] for i in picked], dtype=np.int64)
    arrival = np.asarray([(jobs[i].submitted - spec.start).total_seconds() for i in idx]) / spec.time_scale
    order = np.argsort(arrival, kind="stable")  # the trace file is not sorted by time
    idx, arrival = idx[order], np.round(arrival[order], 3)
    bucket = all_bucket[idx]
    work = np.round(np.clip(all_duration[idx] / ref[bucket], spec.min_work, spec.max_work), 3)
    return Trace(arrival, tuple(spec.types[b] for b in bucket), work, np.full(len(idx), np.nan),
                 tuple(philly_comments(spec, source, len(idx), len(chosen))))


def made_by_import(path: str | Path) -> bool:
    """Whether `path` is a trace that `tapfinger import-trace` wrote (its provenance comment says
    so): the command replaces those, and nothing else without --force."""
    try:
        with Path(path).open(encoding="utf-8-sig") as fh:
            head = [fh.readline() for _ in range(10)]  # the comments come first (`philly_comments`)
    except (OSError, UnicodeDecodeError):
        return False
    return any(line.startswith("# Made by: tapfinger import-trace ") for line in head)


def philly_comments(spec: PhillyImport, source: str, kept: int, in_window: int) -> list[str]:
    """Provenance lines for the header of an imported trace."""
    lines = [
        "Derived from the Microsoft Philly job trace (2017; msr-fiddle/philly-traces, CC-BY-4.0),",
        "job summary as published in the petuum/adaptdl OSDI'21 artifact.",
        "Made by: tapfinger import-trace " + " ".join([
            f"--start '{spec.start.isoformat(sep=' ')}'", f"--hours {spec.hours:g}", f"--scale {spec.scale:g}",
            f"--seed {spec.seed}", f"--types {','.join(spec.types)}",
            f"--gpu-time-edges {','.join(f'{e:g}' for e in spec.gpu_time_edges)}",
            f"--time-scale {spec.time_scale:g}", f"--min-work {spec.min_work:g}", f"--max-work {spec.max_work:g}"]),
        f"Source file: {source or 'philly.csv'}. Kept {kept} of the window's {in_window} jobs.",
        "Mapping (GPU-time bucket -> task type, duration -> work): docs/traces.md.",
    ]
    return lines
