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
reads back to the same slots exactly. A scenario's trace must not have a row arriving at or after
its `max_slots`: the episode ends first, so the task would never arrive (and would be missing
from the results but not from the bound). The file is UTF-8; a leading byte-order mark is ignored.

Only the visibility (which clusters see each task) is drawn at random, from the episode's
generator, by the scenario's visibility mode: the same seed gives the same episode.

`tapfinger.testbed.philly` turns the Microsoft Philly job trace into this format (`tapfinger
import-trace`); docs/traces.md documents the mapping.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from tapfinger.sim.scenario import Scenario
from tapfinger.sim.textfile import read_text
from tapfinger.sim.workload import Workload, _visible_sets

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


class Horizon(NamedTuple):
    """When a scenario's episode ends: its first `rows` rows (0 = all) must arrive before it."""

    slot_seconds: float
    max_slots: int
    rows: int = 0


def read_trace(path: str | Path, task_types: Sequence[str] | None = None, horizon: Horizon | None = None) -> Trace:
    """Read and validate a trace file; with `task_types`, every row's type must be one of them;
    with `horizon`, the rows it replays must arrive before the episode ends."""
    path = Path(path)
    rows = _Rows(path, task_types, horizon)
    comments: list[str] = []
    for lineno, raw in enumerate(_read_text(path).splitlines(), start=1):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments.append(stripped[1:].strip())
            continue
        cells = [c.strip() for c in next(csv.reader([raw]))]
        if rows.header is None:
            rows.set_header(lineno, _check_header(path, lineno, cells))
        else:
            rows.add(lineno, cells)
    return rows.trace(tuple(comments))


def _read_text(path: Path) -> str:
    # A spreadsheet's byte-order mark would otherwise glue itself to the first column name.
    return read_text(path, "trace", TraceError,
                     fix_missing="check the path (a scenario's `arrivals.trace` is relative to the scenario file; "
                                 "`package:` and `shared:` prefixes name packaged and shared data)",
                     fix_directory="give the path of the trace CSV file in it",
                     fix_encoding="save the CSV as UTF-8")


class _Rows:
    """The task rows of one trace file, validated cell by cell as they are read."""

    def __init__(self, path: Path, task_types: Sequence[str] | None, horizon: Horizon | None):
        self.path = path
        self.task_types = task_types
        self.horizon = horizon
        self.known = set(task_types) if task_types is not None else None
        self.header: list[str] | None = None
        self.header_line = 0
        self.cols: dict[str, int] = {}
        self.arrivals: list[float] = []
        self.types: list[str] = []
        self.works: list[float] = []
        self.deadlines: list[float] = []

    def set_header(self, lineno: int, names: list[str]) -> None:
        self.header, self.header_line = names, lineno
        self.cols = {name: i for i, name in enumerate(names)}

    def add(self, lineno: int, cells: list[str]) -> None:
        assert self.header is not None
        if len(cells) != len(self.header):
            raise _fail(self.path, lineno, None, f"{len(cells)} cells, but the header (line {self.header_line}) "
                        f"has {len(self.header)} columns {self.header}",
                        "give every row one cell per header column (leave optional cells empty)")
        # Checked in column order, so the first bad cell of a row is the one reported.
        t = self._arrival(lineno, cells[self.cols["arrival_seconds"]])
        name = self._task_type(lineno, cells[self.cols["task_type"]])
        w = self._work(lineno, self._cell(cells, "work"))
        d = self._deadline(lineno, self._cell(cells, "deadline_seconds"), t)
        self.arrivals.append(t)
        self.types.append(name)
        self.works.append(w)
        self.deadlines.append(d)

    def _cell(self, cells: list[str], column: str) -> str:
        """An optional column's cell ("" when the file has no such column)."""
        return cells[self.cols[column]] if column in self.cols else ""

    def _arrival(self, lineno: int, text: str) -> float:
        t = _number(self.path, lineno, "arrival_seconds", text, "write the arrival time in seconds, e.g. 12.5")
        if t < 0:
            raise _fail(self.path, lineno, "arrival_seconds", f"negative time {t:g}",
                        "arrival times count seconds from the start of the episode, from 0 on")
        if self.arrivals and t < self.arrivals[-1]:
            raise _fail(self.path, lineno, "arrival_seconds", f"time {t:g} is earlier than the previous row's "
                        f"{self.arrivals[-1]:g}; rows must be sorted by arrival time",
                        "sort the rows by arrival_seconds (e.g. `sort -t, -k1,1g`), keeping the header first")
        hz = self.horizon
        replayed = hz is not None and (hz.rows == 0 or len(self.arrivals) < hz.rows)
        if replayed and _slot_of(t, hz.slot_seconds) >= hz.max_slots:
            slot, max_slots = hz.slot_seconds, hz.max_slots
            raise _fail(self.path, lineno, "arrival_seconds",
                        f"time {t:g} falls in slot {_slot_of(t, slot):.6g}, after the episode ends at max_slots = "
                        f"{max_slots} ({max_slots * slot:g} s of {slot:g}-second slots), so the task would never arrive",
                        "drop the rows from there on, replay only the first rows (arrivals.tasks), or raise the "
                        "scenario's max_slots")
        return t

    def _task_type(self, lineno: int, name: str) -> str:
        if not name:
            raise _fail(self.path, lineno, "task_type", "is empty", "name one of the scenario's task types")
        if self.known is not None and name not in self.known:
            raise _fail(self.path, lineno, "task_type", f"unknown task type {name!r}",
                        f"use one of the scenario's task types ({', '.join(self.task_types)}), or add a "
                        f"[[task_types]] table named {name!r} to the scenario")
        return name

    def _work(self, lineno: int, text: str) -> float:
        if not text:
            return 1.0
        w = _number(self.path, lineno, "work", text,
                    "write the amount of work as a number (1 = as profiled), or leave it empty for 1")
        if w <= 0:
            raise _fail(self.path, lineno, "work", f"must be > 0, got {w:g}",
                        "give a positive amount of work (1 = as profiled), or drop the row")
        return w

    def _deadline(self, lineno: int, text: str, arrival: float) -> float:
        if not text:
            return math.nan
        d = _number(self.path, lineno, "deadline_seconds", text,
                    "write the deadline in seconds on the arrivals' clock, or leave it empty for none")
        if d < arrival:
            raise _fail(self.path, lineno, "deadline_seconds", f"deadline {d:g} is before the arrival {arrival:g}",
                        "give the absolute time by which the task should finish (>= arrival_seconds), "
                        "or leave it empty for none")
        return d

    def trace(self, comments: tuple[str, ...]) -> Trace:
        if self.header is None:
            raise _fail(self.path, None, None, "is empty (no header, no rows)",
                        f"start it with the header {','.join(TRACE_COLUMNS)} and add one row per task")
        if not self.types:
            raise _fail(self.path, None, None, "has a header but no task rows", "add one row per task")
        return Trace(np.asarray(self.arrivals, dtype=np.float64), tuple(self.types),
                     np.asarray(self.works, dtype=np.float64), np.asarray(self.deadlines, dtype=np.float64),
                     comments)


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
    # Written beside the target and renamed over it, so that an interrupted write leaves the old
    # file (or none), never half a trace; the fixed name means a later write replaces a leftover.
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            for note in notes:
                for line in str(note).splitlines() or [""]:
                    fh.write(f"# {line}\n")
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(TRACE_COLUMNS)
            for t, name, w, d in zip(trace.arrival_seconds, trace.task_type, trace.work, trace.deadline_seconds):
                writer.writerow([_num(t), name, _num(w), "" if math.isnan(d) else _num(d)])
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def trace_from_workload(workload: Workload, scenario: Scenario) -> Trace:
    """The trace of a workload: its true work, as a recorded trace holds what ran (its
    visibility and its work estimates are not part of a trace)."""
    names = [t.name for t in scenario.task_types]
    s = scenario.slot_seconds
    deadline = np.where(workload.deadline >= 0, workload.deadline * s, np.nan)
    return Trace(workload.arrival_slot.astype(np.float64) * s, tuple(names[i] for i in workload.task_type),
                 workload.work.astype(np.float64).copy(), deadline.astype(np.float64))


def _slot_of(seconds: float, slot_seconds: float) -> float:
    """`seconds_to_slots` of one time, as a float (no int64 overflow for absurd times)."""
    return math.floor(seconds / slot_seconds + SLOT_EPS)


def seconds_to_slots(seconds: np.ndarray, slot_seconds: float) -> np.ndarray:
    """The slot during which each time falls (see the module docstring). Clipped at 2**62 slots
    (never reached), so that a far-off deadline cannot overflow int64 into a negative slot."""
    slots = np.floor(np.asarray(seconds, dtype=np.float64) / slot_seconds + SLOT_EPS)
    return np.minimum(slots, float(2**62)).astype(np.int64)


def trace_to_workload(trace: Trace, scenario: Scenario, rng: np.random.Generator) -> Workload:
    names = [t.name for t in scenario.task_types]
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({n for n in trace.task_type if n not in index})
    if unknown:
        raise TraceError(f"trace has task type(s) {unknown} that scenario {scenario.name} lacks. Fix: use "
                         f"its task types ({', '.join(names)})")
    late = np.flatnonzero(trace.arrival_seconds / scenario.slot_seconds + SLOT_EPS >= scenario.max_slots)
    if late.size:  # `read_trace` with a horizon names the line; this guards traces built in code
        raise TraceError(f"trace row {late[0]} arrives at {trace.arrival_seconds[late[0]]:g} s, after scenario "
                         f"{scenario.name} ends at max_slots = {scenario.max_slots}. Fix: drop the late rows or "
                         f"raise max_slots")
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
    want = scenario.arrivals.tasks
    trace = read_trace(scenario.arrivals.trace, names, Horizon(scenario.slot_seconds, scenario.max_slots, want))
    if want > trace.num_tasks:
        raise TraceError(f"scenario {scenario.name}: arrivals.tasks = {want} but trace "
                         f"{scenario.arrivals.trace} has only {trace.num_tasks} rows. Fix: set "
                         f"arrivals.tasks <= {trace.num_tasks}, or 0 to replay every row")
    if want:
        trace = trace.head(want)
    return trace_to_workload(trace, scenario, rng)
