"""Arrival traces: replay recorded task arrivals instead of drawing them from a Poisson process.

A trace is a CSV file with a header row and one task per row (docs/traces.md):

    arrival_seconds,task_type,work,deadline_seconds
    0,cnn,1,
    7.5,lm,2.4,600

| column | required | meaning |
|---|---|---|
| `arrival_seconds` | yes | arrival time in seconds from the start of the episode; non-decreasing |
| `task_type` | yes | name of one of the scenario's task types |
| `work` | no | amount of work relative to the task type as profiled (1 = as profiled); > 0; empty = 1 |
| `deadline_seconds` | no | time (same clock as arrivals) by which the task should finish; empty = none |

Lines starting with `#` are comments (importers record how the file was made there); blank
lines are ignored. Times become slots with the scenario's `slot_seconds`: a task arriving
during slot k (k · slot <= t < (k+1) · slot) arrives in slot k, and so does a deadline.
Times within 1e-9 of a slot of a boundary count as on it, so that `write_trace` of a workload
reads back to the same slots exactly.

Only the visibility (which clusters see each task) is drawn at random, from the episode's
generator, by the scenario's visibility mode: the same seed gives the same episode.

`import_philly` turns the Microsoft Philly job trace into this format (`tapfinger
import-trace`); docs/traces.md documents the mapping.
"""

from __future__ import annotations

import csv
import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tapfinger.scenario import Scenario
from tapfinger.workload import Workload, _visible_sets

TRACE_COLUMNS = ("arrival_seconds", "task_type", "work", "deadline_seconds")
REQUIRED_COLUMNS = ("arrival_seconds", "task_type")
# Slack when turning seconds into slots: k * slot / slot may land one ulp below k.
SLOT_EPS = 1e-9


class TraceError(ValueError):
    """A trace file is malformed: the message names the file, line, column, problem and fix."""


@dataclass(frozen=True, eq=False)  # numpy fields: compare with `same_rows`
class Trace:
    """The rows of a trace file, in file order."""

    arrival_seconds: np.ndarray  # [T] float, non-decreasing
    task_type: tuple[str, ...]  # [T] task type names
    work: np.ndarray  # [T] float > 0
    deadline_seconds: np.ndarray  # [T] float, NaN = no deadline
    comments: tuple[str, ...] = field(default=(), compare=False)

    @property
    def num_tasks(self) -> int:
        return len(self.task_type)

    def same_rows(self, other: "Trace") -> bool:
        """Equal rows (arrival, type, work, deadline; NaN deadlines equal), comments aside."""
        return (self.task_type == other.task_type
                and np.array_equal(self.arrival_seconds, other.arrival_seconds)
                and np.array_equal(self.work, other.work)
                and np.array_equal(self.deadline_seconds, other.deadline_seconds, equal_nan=True))

    def head(self, count: int) -> "Trace":
        return Trace(self.arrival_seconds[:count].copy(), self.task_type[:count], self.work[:count].copy(),
                     self.deadline_seconds[:count].copy(), self.comments)


# ---------------------------------------------------------------------------------------------
# reading


def _fail(path: Path, line: int | None, column: str | None, problem: str, fix: str) -> TraceError:
    where = f"trace {path}"
    if line is not None:
        where += f", line {line}"
    if column is not None:
        where += f", column '{column}'"
    return TraceError(f"{where}: {problem}. Fix: {fix}")


def _number(path: Path, line: int, column: str, text: str, fix: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _fail(path, line, column, f"{text!r} is not a number", fix) from None
    if not math.isfinite(value):
        raise _fail(path, line, column, f"{text!r} is not a finite number", fix)
    return value


def read_trace(path: str | Path, task_types: Sequence[str] | None = None) -> Trace:
    """Read and validate a trace file; with `task_types`, every row's type must be one of them."""
    path = Path(path)
    if not path.is_file():
        raise _fail(path, None, None, "file not found",
                    "check the path (a scenario's `arrivals.trace` is relative to the scenario file; "
                    "`package:` and `shared:` prefixes name packaged and shared data)")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise _fail(path, None, None, "is not a text file", "give a CSV text file") from None
    header: list[str] | None = None
    header_line = 0
    cols: dict[str, int] = {}
    arrivals: list[float] = []
    types: list[str] = []
    works: list[float] = []
    deadlines: list[float] = []
    comments: list[str] = []
    known = set(task_types) if task_types is not None else None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments.append(stripped[1:].strip())
            continue
        cells = [c.strip() for c in next(csv.reader([raw]))]
        if header is None:
            header, header_line = _check_header(path, lineno, cells), lineno
            cols = {name: i for i, name in enumerate(header)}
            continue
        if len(cells) != len(header):
            raise _fail(path, lineno, None, f"{len(cells)} cells, but the header (line {header_line}) has "
                        f"{len(header)} columns {header}",
                        "give every row one cell per header column (leave optional cells empty)")
        t = _number(path, lineno, "arrival_seconds", cells[cols["arrival_seconds"]],
                    "write the arrival time in seconds, e.g. 12.5")
        if t < 0:
            raise _fail(path, lineno, "arrival_seconds", f"negative time {t:g}",
                        "arrival times count seconds from the start of the episode, from 0 on")
        if arrivals and t < arrivals[-1]:
            raise _fail(path, lineno, "arrival_seconds", f"time {t:g} is earlier than the previous row's "
                        f"{arrivals[-1]:g}; rows must be sorted by arrival time",
                        "sort the rows by arrival_seconds (e.g. `sort -t, -k1,1g`), keeping the header first")
        name = cells[cols["task_type"]]
        if not name:
            raise _fail(path, lineno, "task_type", "is empty", "name one of the scenario's task types")
        if known is not None and name not in known:
            raise _fail(path, lineno, "task_type", f"unknown task type {name!r}",
                        f"use one of the scenario's task types ({', '.join(task_types)}), or add a "
                        f"[[task_types]] table named {name!r} to the scenario")
        w = 1.0
        if "work" in cols and cells[cols["work"]]:
            w = _number(path, lineno, "work", cells[cols["work"]],
                        "write the amount of work as a number (1 = as profiled), or leave it empty for 1")
            if w <= 0:
                raise _fail(path, lineno, "work", f"must be > 0, got {w:g}",
                            "give a positive amount of work (1 = as profiled), or drop the row")
        d = math.nan
        if "deadline_seconds" in cols and cells[cols["deadline_seconds"]]:
            d = _number(path, lineno, "deadline_seconds", cells[cols["deadline_seconds"]],
                        "write the deadline in seconds on the arrivals' clock, or leave it empty for none")
            if d < t:
                raise _fail(path, lineno, "deadline_seconds", f"deadline {d:g} is before the arrival {t:g}",
                            "give the absolute time by which the task should finish (>= arrival_seconds), "
                            "or leave it empty for none")
        arrivals.append(t)
        types.append(name)
        works.append(w)
        deadlines.append(d)
    if header is None:
        raise _fail(path, None, None, "is empty (no header, no rows)",
                    f"start it with the header {','.join(TRACE_COLUMNS)} and add one row per task")
    if not types:
        raise _fail(path, None, None, "has a header but no task rows", "add one row per task")
    return Trace(np.asarray(arrivals, dtype=np.float64), tuple(types), np.asarray(works, dtype=np.float64),
                 np.asarray(deadlines, dtype=np.float64), tuple(comments))


def _check_header(path: Path, lineno: int, cells: list[str]) -> list[str]:
    """Validate the header row: required columns present, no unknown or repeated ones."""
    names = [c.lower() for c in cells]
    try:
        float(names[0])
        looks_numeric = True
    except ValueError:
        looks_numeric = False
    if looks_numeric:
        raise _fail(path, lineno, None, f"the first row {cells} is data, not a header",
                    f"start the file with a header row such as {','.join(TRACE_COLUMNS)}")
    unknown = [c for c in names if c not in TRACE_COLUMNS]
    if unknown:
        raise _fail(path, lineno, None, f"unknown column(s) {unknown}",
                    f"use only {', '.join(TRACE_COLUMNS)} (the last two are optional)")
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise _fail(path, lineno, None, f"column(s) {repeated} appear more than once", "name each column once")
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise _fail(path, lineno, None, f"missing column(s) {missing} (header is {cells})",
                    f"the header must name at least {', '.join(REQUIRED_COLUMNS)}")
    return names


# ---------------------------------------------------------------------------------------------
# writing


def _num(x: float) -> str:
    """Shortest text that reads back to the same float (integers without '.0')."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def write_trace(path: str | Path, trace: Trace, comments: Sequence[str] | None = None) -> None:
    """Write a trace file that `read_trace` reads back to an equal `Trace`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    notes = trace.comments if comments is None else tuple(comments)
    with path.open("w", newline="") as fh:
        for note in notes:
            for line in str(note).splitlines() or [""]:
                fh.write(f"# {line}\n")
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(TRACE_COLUMNS)
        for t, name, w, d in zip(trace.arrival_seconds, trace.task_type, trace.work, trace.deadline_seconds):
            writer.writerow([_num(t), name, _num(w), "" if math.isnan(d) else _num(d)])


def trace_from_workload(workload: Workload, scenario: Scenario) -> Trace:
    """The trace of a workload (its visibility is not part of a trace)."""
    names = [t.name for t in scenario.task_types]
    s = scenario.slot_seconds
    deadline = np.where(workload.deadline >= 0, workload.deadline * s, np.nan)
    return Trace(workload.arrival_slot.astype(np.float64) * s, tuple(names[i] for i in workload.task_type),
                 workload.work.astype(np.float64).copy(), deadline.astype(np.float64))


def seconds_to_slots(seconds: np.ndarray, slot_seconds: float) -> np.ndarray:
    """The slot during which each time falls (see the module docstring)."""
    return np.floor(np.asarray(seconds, dtype=np.float64) / slot_seconds + SLOT_EPS).astype(np.int64)


def trace_to_workload(trace: Trace, scenario: Scenario, rng: np.random.Generator) -> Workload:
    names = [t.name for t in scenario.task_types]
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({n for n in trace.task_type if n not in index})
    if unknown:
        raise TraceError(f"trace has task type(s) {unknown} that scenario {scenario.name} lacks. Fix: use "
                         f"its task types ({', '.join(names)})")
    deadline = np.full(trace.num_tasks, -1, dtype=np.int64)
    has = ~np.isnan(trace.deadline_seconds)
    deadline[has] = seconds_to_slots(trace.deadline_seconds[has], scenario.slot_seconds)
    return Workload(
        arrival_slot=seconds_to_slots(trace.arrival_seconds, scenario.slot_seconds),
        task_type=np.asarray([index[n] for n in trace.task_type], dtype=np.int64),
        visible=_visible_sets(rng, trace.num_tasks, scenario.num_clusters, scenario.visibility),
        work=trace.work.astype(np.float64).copy(),
        deadline=deadline,
    )


def trace_workload(scenario: Scenario, rng: np.random.Generator) -> Workload:
    """The workload of a trace scenario: its `arrivals.trace` file, first `arrivals.tasks` rows
    (0 = all), visibility drawn from `rng`."""
    names = [t.name for t in scenario.task_types]
    trace = read_trace(scenario.arrivals.trace, names)
    want = scenario.arrivals.tasks
    if want > trace.num_tasks:
        raise TraceError(f"scenario {scenario.name}: arrivals.tasks = {want} but trace "
                         f"{scenario.arrivals.trace} has only {trace.num_tasks} rows. Fix: set "
                         f"arrivals.tasks <= {trace.num_tasks}, or 0 to replay every row")
    if want:
        trace = trace.head(want)
    return trace_to_workload(trace, scenario, rng)


# ---------------------------------------------------------------------------------------------
# the Philly importer


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
        if self.hours <= 0:
            raise TraceError(f"--hours must be > 0, got {self.hours:g}")
        if not 0 < self.scale <= 1:
            raise TraceError(f"--scale must be in (0, 1] (the fraction of jobs kept), got {self.scale:g}")
        if self.time_scale <= 0:
            raise TraceError(f"--time-scale must be > 0, got {self.time_scale:g}")
        if len(self.gpu_time_edges) != len(self.types) - 1:
            raise TraceError(f"{len(self.types)} task types need {len(self.types) - 1} GPU-time edges, got "
                             f"{len(self.gpu_time_edges)} ({list(self.gpu_time_edges)}). Fix: give "
                             f"--gpu-time-edges one value fewer than --types")
        if list(self.gpu_time_edges) != sorted(self.gpu_time_edges) or any(e <= 0 for e in self.gpu_time_edges):
            raise TraceError(f"--gpu-time-edges must be positive and increasing, got {list(self.gpu_time_edges)}")
        if len(set(self.types)) != len(self.types) or not all(self.types):
            raise TraceError(f"--types must be distinct non-empty names, got {list(self.types)}")
        if not 0 < self.min_work <= self.max_work:
            raise TraceError(f"need 0 < --min-work <= --max-work, got {self.min_work:g} and {self.max_work:g}")


def read_philly(path: str | Path) -> list[PhillyJob]:
    """Jobs of a Philly summary CSV (header timestamp,duration,num_gpus,gpu_time[,cluster])."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"Philly trace {path}: file not found. Fix: pass --philly PATH, or set "
                         f"TAPFINGER_SHARED_DATA to the folder holding philly/philly.csv")
    jobs = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in PHILLY_COLUMNS if c not in header]
        if missing:
            raise TraceError(f"Philly trace {path}, line 1: missing column(s) {missing} (header is {header}). "
                             f"Fix: give the job summary CSV with columns {','.join(PHILLY_COLUMNS)}")
        idx = [header.index(c) for c in PHILLY_COLUMNS]
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) < len(header):
                raise TraceError(f"Philly trace {path}, line {lineno}: {len(row)} cells, the header has "
                                 f"{len(header)}. Fix: repair or drop the line")
            ts, dur, ngpu, gtime = (row[i].strip() for i in idx)
            try:
                submitted = _dt.datetime.strptime(ts, PHILLY_TIME_FORMAT)
            except ValueError:
                raise TraceError(f"Philly trace {path}, line {lineno}, column 'timestamp': {ts!r} is not "
                                 f"YYYY-MM-DD HH:MM:SS. Fix: repair or drop the line") from None
            try:
                job = PhillyJob(submitted, float(dur), int(float(ngpu)), float(gtime))
            except ValueError:
                raise TraceError(f"Philly trace {path}, line {lineno}: duration, num_gpus and gpu_time must be "
                                 f"numbers, got {[dur, ngpu, gtime]}. Fix: repair or drop the line") from None
            if job.duration < 0 or job.gpu_time < 0 or job.num_gpus < 0:
                raise TraceError(f"Philly trace {path}, line {lineno}: negative duration, num_gpus or gpu_time "
                                 f"({[dur, ngpu, gtime]}). Fix: repair or drop the line")
            jobs.append(job)
    if not jobs:
        raise TraceError(f"Philly trace {path} has no jobs")
    return jobs


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
