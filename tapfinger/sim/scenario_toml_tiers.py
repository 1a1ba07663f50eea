"""Reading the cloud-edge and deadline keys of a scenario's TOML (issue 14), for `scenario_toml`.

A cluster's `kind` and `capacity` schedule (with the CSV of a `csv` curve, read on load), a task
type's `edge_speed`, `request` and `throughput` progress model, the top-level `allow_decline`,
`on_shrink`, `restart_seconds`, `migration_seconds` and the `[deadlines]` table. Kept apart from
`scenario_toml` so that each module stays one job of a readable size; the `_Reader` there (passed
in as `rd`) names file and key in every error. docs/scenario-format.md documents every key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tapfinger.sim.scenario import (CAPACITY_CURVES, DEADLINE_RULES, SHRINK_RULES, CapacitySchedule, Deadlines,
                                    ProgressSpec, ScenarioError, resolve_data_path)
from tapfinger.sim.textfile import csv_rows, read_text

if TYPE_CHECKING:  # only for annotations: scenario_toml imports this module
    from tapfinger.sim.scenario_toml import _Reader

# The keys each capacity curve takes (besides `curve`), and what a tidal curve must state: a
# default peak or trough would be a guess about someone's edge site, so they are required.
CURVE_KEYS = {"constant": set(), "tidal": {"period_seconds", "peak_load", "trough_ratio", "peak_seconds",
                                           "start_seconds"},
              "csv": {"file", "start_seconds"}}
THROUGHPUT_KEYS = {"model", "gpus", "iterations_per_second", "iterations"}
CSV_HEADER = ["time_seconds", "available"]


# ---------------------------------------------------------------------------------------------
# [[clusters]]: capacity = {curve = ...}


def capacity_schedule(rd: _Reader, table: dict, path: str, base_dir: Path | None,
                      resolve_files: bool) -> CapacitySchedule:
    """A cluster's `capacity = {curve = ...}` (absent = constant, all of it always)."""
    cap = rd.get(table, "capacity", path, dict, default=None,
                 fix='write `capacity = {curve = "tidal", ...}` as an inline table')
    if cap is None:
        return CapacitySchedule()
    cpath = f"{path}.capacity"
    rd.unknown_keys(cap, cpath, {"curve"} | set().union(*CURVE_KEYS.values()))
    curve = rd.choice(cap, "curve", cpath, CAPACITY_CURVES)
    rd.unknown_keys(cap, f"{cpath} (curve = \"{curve}\")", {"curve"} | CURVE_KEYS[curve])
    if curve == "constant":
        return CapacitySchedule()
    start = float(rd.number(cap, "start_seconds", cpath, 0.0, low=0.0))
    if curve == "tidal":
        return CapacitySchedule(
            curve, period_seconds=float(rd.number(cap, "period_seconds", cpath, 86_400.0, low=0.0, strict_low=True)),
            peak_load=float(rd.number(cap, "peak_load", cpath, low=0.0, high=1.0)),
            trough_ratio=float(rd.number(cap, "trough_ratio", cpath, low=0.0, high=1.0)),
            peak_seconds=float(rd.number(cap, "peak_seconds", cpath, low=0.0)), start_seconds=start)
    spec = rd.get(cap, "file", cpath, str, fix='add `file = "capacity.csv"` (rows time_seconds,available)')
    if not resolve_files:
        return CapacitySchedule(curve, file=spec, start_seconds=start)
    file = resolve_data_path(spec, base_dir)
    times, shares = read_capacity_csv(file, f"scenario {rd.source}: key '{cpath}.file': capacity schedule")
    return CapacitySchedule(curve, file=str(file), start_seconds=start, times=times, shares=shares)


def read_capacity_csv(path: Path, what: str = "capacity schedule") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (times, shares) of a capacity CSV: a header `time_seconds,available`, then rows whose
    times start at 0 and strictly increase and whose shares lie in [0, 1]. Blank lines and `#`
    comments are skipped. Errors name `what` and the file, and the line and column of a bad cell."""
    text = read_text(path, what, ScenarioError, fix_missing="check the path (relative to the scenario file; "
                     "`package:` and `shared:` prefixes name packaged and shared data)",
                     fix_directory="give the path of the capacity CSV file in it", fix_encoding="save the CSV as UTF-8")
    where = f"{what} {path}"
    times: list[float] = []
    shares: list[float] = []
    for lineno, cells in csv_rows(text, CSV_HEADER, where, ScenarioError):
        if len(cells) != 2:
            raise ScenarioError(f"{where}, line {lineno}: {len(cells)} cells, but a row has 2 ({','.join(CSV_HEADER)}). "
                                f"Fix: write one time and one share per row")
        t = _cell(where, lineno, "time_seconds", cells[0])
        share = _cell(where, lineno, "available", cells[1])
        _check_row(where, lineno, t, share, times)
        times.append(t)
        shares.append(share)
    if not times:
        raise ScenarioError(f"{where}: no rows. Fix: write at least the row `0,1` after the header "
                            f"`{','.join(CSV_HEADER)}`")
    return tuple(times), tuple(shares)


def _cell(where: str, lineno: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ScenarioError(f"{where}, line {lineno}, column '{column}': {text!r} is not a number. "
                            f"Fix: write a number") from None
    if not math.isfinite(value):
        raise ScenarioError(f"{where}, line {lineno}, column '{column}': {text!r} is not a finite number. "
                            f"Fix: write an ordinary number")
    return value


def _check_row(where: str, lineno: int, t: float, share: float, times: list[float]) -> None:
    col = f"{where}, line {lineno}, column"
    if not times and t != 0:
        raise ScenarioError(f"{col} 'time_seconds': the first row's time is {t:g}, not 0, so the share before "
                            f"it would be unknown. Fix: start with a row at time 0")
    if times and t <= times[-1]:
        raise ScenarioError(f"{col} 'time_seconds': {t:g} does not come after the previous row's {times[-1]:g}. "
                            f"Fix: list the rows in strictly increasing time, one row per time")
    if not 0.0 <= share <= 1.0:
        raise ScenarioError(f"{col} 'available': {share:g} is not a share in [0, 1]. Fix: write the available "
                            f"fraction of the cluster's capacity (1 = all of it, 0 = none)")


def max_share(schedule: CapacitySchedule) -> float:
    """The largest share of its capacity a cluster ever has under `schedule` (1 when constant, or
    when a csv schedule was not read): a cluster at 0 always can start no task at all."""
    if schedule.curve == "tidal":
        return 1.0 - schedule.peak_load * schedule.trough_ratio
    if schedule.curve == "csv" and schedule.shares:
        return max(schedule.shares)
    return 1.0


# ---------------------------------------------------------------------------------------------
# [[task_types]]: edge_speed, request, progress = {model = "throughput", ...}


def edge_speed(rd: _Reader, table: dict, path: str) -> float:
    """Throughput on an edge node as a share of that on the cloud (EdgeFlow's lambda), in (0, 1]."""
    return float(rd.number(table, "edge_speed", path, 1.0, low=0.0, strict_low=True, high=1.0))


def request(rd: _Reader, table: dict, path: str, resources: tuple[str, ...], minimum: tuple[int, ...],
            grid_max: tuple[int, ...]) -> tuple[int, ...]:
    """`request = {gpu = 4}`: the allocation a user asks for; an unlisted resource is the minimum."""
    value = rd.get(table, "request", path, dict, default=None, fix="write `request = {cpu = 2, gpu = 4}`")
    if value is None:
        return ()
    full = f"{path}.request"
    unknown = set(value) - set(resources)
    if unknown:
        raise rd.fail(full, f"unknown resource(s) {sorted(unknown)}", f"use only the scenario's resources {list(resources)}")
    out = []
    for r, m, g in zip(resources, minimum, grid_max):
        amount = rd.integer(value, r, full, default=m)
        if amount < m:
            raise rd.fail(f"{full}.{r}", f"{amount} is below the task type's minimum.{r} = {m}",
                          f"request at least the minimum ({m}), or leave {r} out to request the minimum")
        if amount > g:
            raise rd.fail(f"{full}.{r}", f"{amount} exceeds grid_max.{r} = {g}, so no task is ever given it",
                          f"request at most {g}, or raise grid_max.{r}")
        out.append(amount)
    return tuple(out)


def throughput_progress(rd: _Reader, prog: dict, ppath: str) -> ProgressSpec:
    """`{model = "throughput", gpus = [1, 2, 4], iterations_per_second = [...], iterations = n}`."""
    rd.unknown_keys(prog, f"{ppath} (model = \"throughput\")", THROUGHPUT_KEYS)
    gpus = rd.get(prog, "gpus", ppath, list, fix="add `gpus = [1, 2, 4, 8]` (the GPU counts measured)")
    if not gpus or not all(isinstance(g, int) and not isinstance(g, bool) for g in gpus):
        raise rd.fail(f"{ppath}.gpus", f"must be a non-empty list of integers, got {gpus!r}", "write e.g. [1, 2, 4, 8]")
    if gpus[0] < 1 or any(b <= a for a, b in zip(gpus, gpus[1:])):
        raise rd.fail(f"{ppath}.gpus", f"{gpus} must be strictly increasing from at least 1",
                      "list each measured GPU count once, smallest first (ips at 0 GPUs is 0 by definition)")
    ips = rd.get(prog, "iterations_per_second", ppath, list, fix="add one iterations per second per GPU count")
    if len(ips) != len(gpus):
        raise rd.fail(f"{ppath}.iterations_per_second", f"has {len(ips)} values for {len(gpus)} GPU counts",
                      "give one value per entry of `gpus`, in the same order")
    for j, v in enumerate(ips):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v <= 0:
            raise rd.fail(f"{ppath}.iterations_per_second[{j}]", f"must be a finite number > 0, got {v!r}",
                          "write the measured iterations per second (a speed of 0 would never finish)")
    iterations = float(rd.number(prog, "iterations", ppath, low=0.0, strict_low=True))
    return ProgressSpec("throughput", gpus=tuple(gpus), iterations_per_second=tuple(float(v) for v in ips),
                        iterations=iterations)


# ---------------------------------------------------------------------------------------------
# top level: allow_decline, on_shrink, restart_seconds, migration_seconds, [deadlines]


def tier_settings(rd: _Reader, data: dict) -> dict[str, Any]:
    """The top-level tier keys, each with its default: the Scenario fields of the same names."""
    return {
        "allow_decline": rd.get(data, "allow_decline", "", bool, default=False),
        "on_shrink": rd.choice(data, "on_shrink", "", SHRINK_RULES, default="preempt"),
        "restart_seconds": float(rd.number(data, "restart_seconds", "", default=0.0, low=0.0)),
        "migration_seconds": float(rd.number(data, "migration_seconds", "", default=0.0, low=0.0)),
    }


def deadlines(rd: _Reader, data: dict) -> Deadlines:
    """`[deadlines]` (optional; absent = no deadlines beyond a trace's own). Present, its rule
    defaults to ElasticFlow's, with ElasticFlow's slack U(0.5, 1.5) and every task deadline-bound."""
    table = rd.get(data, "deadlines", "", dict, default=None, fix="write [deadlines] as a table")
    if table is None:
        return Deadlines()
    rd.unknown_keys(table, "deadlines", {"rule", "slack", "fraction"})
    rule = rd.choice(table, "rule", "deadlines", DEADLINE_RULES, default="elasticflow")
    if rule == "none":
        extra = sorted(set(table) - {"rule"})
        if extra:
            raise rd.fail(f"deadlines.{extra[0]}", 'is set but rule = "none" draws no deadlines',
                          'remove it, or set rule = "elasticflow"')
        return Deadlines()
    slack = rd.get(table, "slack", "deadlines", list, default=[0.5, 1.5], fix="write `slack = [0.5, 1.5]`")
    if (len(slack) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in slack)
            or not all(math.isfinite(v) for v in slack) or not 0 < slack[0] <= slack[1]):
        raise rd.fail("deadlines.slack", f"must be [low, high] with finite 0 < low <= high, got {slack!r}",
                      "write e.g. [0.5, 1.5] (ElasticFlow's: deadline = arrival + U(low, high) x duration)")
    fraction = float(rd.number(table, "fraction", "deadlines", 1.0, low=0.0, high=1.0))
    return Deadlines(rule, slack_low=float(slack[0]), slack_high=float(slack[1]), fraction=fraction)
