"""Reading a scenario's `[faults]` table (issue 15), for `scenario_toml`: failure, slowdown and
departure processes, a replayed event file, and checkpoints. The `_Reader` of `scenario_toml`
(passed in as `rd`) names file and key in every error; docs/scenario-format.md documents the keys.

Event file (CSV, UTF-8; blank lines and `#` comments skipped):

    time_seconds,cluster,node,event,value
    3600,site-a,0,fail,
    5400,site-a,0,repair,
    7200,site-b,1,slow,0.5

`node` is the node's index within its cluster, `event` one of fail, repair, slow, recover, leave,
join; `value` is the speed factor of a `slow` event (in (0, 1]) and empty otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from tapfinger.sim.scenario import FAULT_EVENTS, Cluster, Faults, ScenarioError, resolve_data_path
from tapfinger.sim.textfile import csv_rows, read_text

if TYPE_CHECKING:  # only for annotations: scenario_toml imports this module
    from tapfinger.sim.scenario_toml import _Reader

FAULT_KEYS = {"clusters", "leave_clusters", "restart_seconds", "mtbf_seconds", "repair_seconds", "slowdown_mtbf_seconds", "slowdown_seconds",
              "slowdown_factor", "leave_mtbf_seconds", "absence_seconds", "events", "checkpoint_seconds",
              "checkpoint_cost_seconds"}
# A process runs only with both its mean gap and its mean length.
PAIRS = (("mtbf_seconds", "repair_seconds"), ("slowdown_mtbf_seconds", "slowdown_seconds"),
         ("leave_mtbf_seconds", "absence_seconds"))
EVENT_HEADER = ["time_seconds", "cluster", "node", "event", "value"]


def faults(rd: _Reader, data: dict, clusters: tuple[Cluster, ...], base_dir: Path | None,
           resolve_files: bool) -> Faults:
    """`[faults]` (optional; absent = reliable nodes)."""
    table = rd.get(data, "faults", "", dict, default=None, fix="write [faults] as a table")
    if table is None:
        return Faults()
    rd.unknown_keys(table, "faults", FAULT_KEYS)
    names = [c.name for c in clusters]
    chosen, leaving = (_cluster_names(rd, table, key, names) for key in ("clusters", "leave_clusters"))
    seconds = {k: float(rd.number(table, k, "faults", 0.0, low=0.0)) for p in PAIRS for k in p}
    for gap, length in PAIRS:
        if (seconds[gap] > 0) != (seconds[length] > 0):
            missing = length if seconds[gap] > 0 else gap
            raise rd.fail(f"faults.{missing}", f"is 0 (or missing) while faults.{gap if missing == length else length} "
                          f"is set, so the process would never {'end' if missing == length else 'start'}",
                          f"set both faults.{gap} and faults.{length} > 0, or neither")
    factor = float(rd.number(table, "slowdown_factor", "faults", 0.5, low=0.0, strict_low=True, high=1.0))
    events, file = (), ""
    spec = rd.get(table, "events", "faults", str, default="", fix='write events = "faults.csv"')
    if spec and resolve_files:
        path = resolve_data_path(spec, base_dir)
        events, file = read_event_csv(path, clusters, f"scenario {rd.source}: key 'faults.events': fault events"), str(path)
    elif spec:
        file = spec
    return Faults(clusters=chosen, leave_clusters=leaving, slowdown_factor=factor, events=events, file=file,
                  checkpoint_seconds=float(rd.number(table, "checkpoint_seconds", "faults", 0.0, low=0.0)),
                  checkpoint_cost_seconds=float(rd.number(table, "checkpoint_cost_seconds", "faults", 0.0, low=0.0)),
                  restart_seconds=float(rd.number(table, "restart_seconds", "faults", 0.0, low=0.0)),
                  **seconds)


def _cluster_names(rd: _Reader, table: dict, key: str, names: list[str]) -> tuple[str, ...]:
    chosen = rd.get(table, key, "faults", list, default=[], fix=f"write e.g. {key} = [{names[0]!r}]")
    unknown = [c for c in chosen if c not in names]
    if unknown or not all(isinstance(c, str) for c in chosen):
        raise rd.fail(f"faults.{key}", f"names no cluster of the scenario: {unknown or chosen!r}",
                      f"use cluster names from {names} (or leave it out: every cluster's nodes)")
    return tuple(chosen)


def read_event_csv(path: Path, clusters: tuple[Cluster, ...], what: str = "fault events"
                   ) -> tuple[tuple[float, int, str, float], ...]:
    """The rows of a fault event file as (time_seconds, global node, event, value), in file order
    (times must not decrease). Errors name `what`, the file, the line and the column."""
    text = read_text(path, what, ScenarioError, fix_missing="check the path (relative to the scenario file)",
                     fix_directory="give the path of the event CSV file in it", fix_encoding="save the CSV as UTF-8")
    where = f"{what} {path}"
    first = {c.name: sum(len(x.nodes) for x in clusters[:i]) for i, c in enumerate(clusters)}
    sizes = {c.name: len(c.nodes) for c in clusters}
    rows: list[tuple[float, int, str, float]] = []
    for lineno, cells in csv_rows(text, EVENT_HEADER, where, ScenarioError):
        rows.append(_event_row(where, lineno, cells, first, sizes, rows[-1][0] if rows else 0.0))
    return tuple(rows)


def _event_row(where: str, lineno: int, cells: list[str], first: dict[str, int], sizes: dict[str, int],
               previous: float) -> tuple[float, int, str, float]:
    at = f"{where}, line {lineno}"
    if len(cells) != len(EVENT_HEADER):
        raise ScenarioError(f"{at}: {len(cells)} cells, but a row has {len(EVENT_HEADER)} ({','.join(EVENT_HEADER)}). "
                            f"Fix: write every column (value may be empty)")
    t_text, cluster, node_text, event, value_text = cells
    try:
        t = float(t_text)
    except ValueError:
        t = math.nan
    if not math.isfinite(t) or t < previous:
        raise ScenarioError(f"{at}, column 'time_seconds': {t_text!r} is not a finite time >= {previous:g} (the "
                            f"previous row's). Fix: write seconds since the episode's start, in order")
    if cluster not in first:
        raise ScenarioError(f"{at}, column 'cluster': {cluster!r} is no cluster of the scenario. Fix: use one of "
                            f"{', '.join(first)}")
    if not node_text.isdigit() or int(node_text) >= sizes[cluster]:
        raise ScenarioError(f"{at}, column 'node': {node_text!r} is not a node index 0..{sizes[cluster] - 1} of "
                            f"cluster {cluster!r}. Fix: write the node's place in the cluster's `nodes` list")
    if event not in FAULT_EVENTS:
        raise ScenarioError(f"{at}, column 'event': {event!r} is not an event. Fix: use one of {', '.join(FAULT_EVENTS)}")
    value = 0.0
    if event == "slow":
        try:
            value = float(value_text)
        except ValueError:
            value = math.nan
        if not 0.0 < value <= 1.0:
            raise ScenarioError(f"{at}, column 'value': a slow event needs the speed factor in (0, 1], got "
                                f"{value_text!r}. Fix: write e.g. 0.5 for half speed")
    elif value_text:
        raise ScenarioError(f"{at}, column 'value': {event} takes no value, got {value_text!r}. Fix: leave it empty")
    return t, first[cluster] + int(node_text), event, value
