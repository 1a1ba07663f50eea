"""Reading a scenario's TOML tables into a `Scenario`, with errors that name file, key and fix.

`parse_scenario` reads one table at a time (the top-level keys, `[[clusters]]`, `[[task_types]]`
with their `progress`, `[arrivals]`, `profile`, `[deadlines]`, `[uncertainty]`), each in its own function;
the cloud-edge and deadline keys are read by `tapfinger.sim.scenario_toml_tiers`. The order is fixed
(and was the order of the single function this replaced): a file with several mistakes always
reports the same one first. docs/scenario-format.md documents every key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tapfinger.sim import scenario_toml_faults as fault_table
from tapfinger.sim import scenario_toml_tiers as tiers
from tapfinger.sim.scenario import (ARRIVAL_PROCESSES, CLUSTER_KINDS, MAX_RATE, MAX_SIGMA, MAX_SLOTS, MAX_TASKS,
                                    PROGRESS_MODELS, SPEED_RESOURCES, VISIBILITY_MODES, Arrivals, Cluster, ProgressSpec,
                                    Scenario, ScenarioError, TaskType, Uncertainty, resolve_data_path)

TOP_LEVEL_KEYS = {"name", "description", "resources", "clusters", "task_types", "arrivals", "grid_max",
                  "visibility", "window_size", "slot_seconds", "switch_weight", "allow_preemption",
                  "profile", "startup_seconds", "max_slots", "uncertainty",
                  # issue 14: deadlines and the cloud-edge tier (read in scenario_toml_tiers)
                  "allow_decline", "on_shrink", "restart_seconds", "migration_seconds", "deadlines",
                  "faults"}  # issue 15: failures, slowdowns, departures, checkpoints (scenario_toml_faults)


class _Reader:
    """Reads typed values from a TOML table, raising ScenarioError that names file and key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, problem: str, fix: str) -> ScenarioError:
        return ScenarioError(f"scenario {self.source}: key '{key}': {problem}. Fix: {fix}")

    def get(self, table: dict, key: str, path: str, kind: type | tuple, default: Any = ...,
            fix: str = "") -> Any:
        full = f"{path}.{key}" if path else key
        if key not in table:
            if default is ...:
                raise self.fail(full, "is missing", fix or f"add `{key} = ...`")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            raise self.fail(full, f"must be {names}, got {type(value).__name__} {value!r}",
                            fix or f"write `{key}` as {names}")
        return value

    def number(self, table: dict, key: str, path: str, default: Any = ..., *, low: float | None = None,
               high: float | None = None, strict_low: bool = False) -> float:
        value = self.get(table, key, path, (int, float), default)
        full = f"{path}.{key}" if path else key
        # TOML has `nan` and `inf`; every comparison with NaN is false, so it would pass the
        # range checks below and surface later as NaN JCTs or a numpy message without a key.
        if not math.isfinite(value):
            raise self.fail(full, f"must be a finite number, got {value}", "write an ordinary number")
        if low is not None and (value < low or (strict_low and value <= low)):
            op = ">" if strict_low else ">="
            raise self.fail(full, f"must be {op} {low}, got {value}", f"set it {op} {low}")
        if high is not None and value > high:
            raise self.fail(full, f"must be <= {high}, got {value}", f"set it <= {high}")
        return value

    def integer(self, table: dict, key: str, path: str, default: Any = ..., *, low: int | None = None,
                high: int | None = None, why: str = "") -> int:
        value = self.get(table, key, path, int, default)
        full = f"{path}.{key}" if path else key
        if low is not None and value < low:
            raise self.fail(full, f"must be an integer >= {low}, got {value}", f"set it >= {low}")
        if high is not None and value > high:
            raise self.fail(full, f"must be <= {high}{why}, got {value}", f"set it <= {high}")
        return value

    def choice(self, table: dict, key: str, path: str, options: tuple[str, ...], default: Any = ...) -> str:
        value = self.get(table, key, path, str, default)
        if value not in options:
            full = f"{path}.{key}" if path else key
            raise self.fail(full, f"unknown value {value!r}", f"use one of {', '.join(options)}")
        return value

    def per_resource(self, table: dict, key: str, path: str, resources: tuple[str, ...],
                     default: Any = ..., low: int = 0) -> tuple[int, ...]:
        value = self.get(table, key, path, dict, default)
        return self.resource_vector(value, f"{path}.{key}" if path else key, resources, low)

    def resource_vector(self, value: dict, full: str, resources: tuple[str, ...], low: int = 0) -> tuple[int, ...]:
        unknown = set(value) - set(resources)
        if unknown:
            raise self.fail(full, f"unknown resource(s) {sorted(unknown)}",
                            f"use only the scenario's resources {list(resources)}, or add them to `resources`")
        return tuple(self.integer(value, r, full, low=low) for r in resources)

    def unknown_keys(self, table: dict, path: str, allowed: set[str]) -> None:
        extra = sorted(set(table) - allowed)
        if extra:
            where = path or "top level"
            raise ScenarioError(f"scenario {self.source}: unknown key(s) {extra} at {where}. Fix: "
                                f"remove them or correct the spelling; allowed: {sorted(allowed)}")



def parse_scenario(data: dict, source: str, base_dir: Path | None = None,
                   resolve_files: bool = True) -> Scenario:
    """Validate parsed TOML `data` into a Scenario; `source` names the file in error messages.

    Relative data paths (`arrivals.trace`, `profile`) are resolved against `base_dir` unless
    `resolve_files` is false (`tapfinger scenarios` lists built-ins whose shared data may be absent)."""
    rd = _Reader(source)
    rd.unknown_keys(data, "", TOP_LEVEL_KEYS)
    name = rd.get(data, "name", "", str)
    resources = _resources(rd, data)
    grid_max = rd.per_resource(data, "grid_max", "", resources, low=1)
    clusters = _clusters(rd, data, resources, base_dir, resolve_files)
    task_types = _task_types(rd, data, resources, grid_max)
    arrivals = _arrivals(rd, data, base_dir, resolve_files)
    profile = _profile(rd, data, task_types, base_dir, resolve_files)
    settings = _settings(rd, data) | tiers.tier_settings(rd, data)
    deadlines = tiers.deadlines(rd, data)
    uncertainty = _uncertainty(rd, data, task_types)
    faults = fault_table.faults(rd, data, clusters, base_dir, resolve_files)
    scen = Scenario(name=name, resources=resources, clusters=clusters, task_types=task_types,
                    arrivals=arrivals, grid_max=grid_max, profile=profile, source=source,
                    uncertainty=uncertainty, deadlines=deadlines, faults=faults, **settings)
    _check_startable(scen, rd)
    _check_requests(scen, rd)
    _check_arrival_span(scen, rd)
    return scen


def _resources(rd: _Reader, data: dict) -> tuple[str, ...]:
    """Top-level `resources`: distinct names that include every speed resource (cpu, gpu)."""
    res = rd.get(data, "resources", "", list, fix='add `resources = ["cpu", "gpu"]`')
    if not all(isinstance(r, str) for r in res) or len(set(res)) != len(res):
        raise rd.fail("resources", f"must be a list of distinct names, got {res!r}", 'write e.g. ["cpu", "gpu", "mem"]')
    for needed in SPEED_RESOURCES:
        if needed not in res:
            raise rd.fail("resources", f"lacks '{needed}' (progress models are indexed by cpu and gpu)",
                          f"add \"{needed}\" to resources")
    return tuple(res)


def _clusters(rd: _Reader, data: dict, resources: tuple[str, ...], base_dir: Path | None,
              resolve_files: bool) -> tuple[Cluster, ...]:
    """`[[clusters]]`: at least one, distinct names, each with at least one node."""
    clusters_raw = rd.get(data, "clusters", "", list, fix="add one [[clusters]] table per cluster")
    if not clusters_raw:
        raise rd.fail("clusters", "is empty", "add at least one [[clusters]] table")
    clusters = tuple(_cluster(rd, c, i, resources, base_dir, resolve_files) for i, c in enumerate(clusters_raw))
    if len({c.name for c in clusters}) != len(clusters):
        raise rd.fail("clusters", "cluster names repeat", "give every cluster a distinct name")
    return clusters


def _cluster(rd: _Reader, table: Any, i: int, resources: tuple[str, ...], base_dir: Path | None,
             resolve_files: bool) -> Cluster:
    path = f"clusters[{i}]"
    if not isinstance(table, dict):
        raise rd.fail(path, "must be a table", "write [[clusters]] tables")
    rd.unknown_keys(table, path, {"name", "nodes", "kind", "capacity"})
    name = rd.get(table, "name", path, str, default=f"c{i}")
    nodes_raw = rd.get(table, "nodes", path, list, fix="add `nodes = [{cpu = 16, gpu = 16}]`")
    if not nodes_raw:
        raise rd.fail(f"{path}.nodes", "is empty", "give the cluster at least one node")
    nodes = []
    for j, n in enumerate(nodes_raw):
        if not isinstance(n, dict):
            raise rd.fail(f"{path}.nodes[{j}]", "must be an inline table", "write {cpu = 16, gpu = 16}")
        nodes.append(rd.resource_vector(n, f"{path}.nodes[{j}]", resources, low=0))
    kind = rd.choice(table, "kind", path, CLUSTER_KINDS, default="edge")
    return Cluster(name, tuple(nodes), kind, tiers.capacity_schedule(rd, table, path, base_dir, resolve_files))


def _task_types(rd: _Reader, data: dict, resources: tuple[str, ...],
                grid_max: tuple[int, ...]) -> tuple[TaskType, ...]:
    """`[[task_types]]`: at least one, distinct names."""
    types_raw = rd.get(data, "task_types", "", list, fix="add one [[task_types]] table per task type")
    if not types_raw:
        raise rd.fail("task_types", "is empty", "add at least one [[task_types]] table")
    task_types = tuple(_task_type(rd, t, i, resources, grid_max) for i, t in enumerate(types_raw))
    if len({t.name for t in task_types}) != len(task_types):
        raise rd.fail("task_types", "task type names repeat", "give every task type a distinct name")
    return task_types


def _task_type(rd: _Reader, table: Any, i: int, resources: tuple[str, ...], grid_max: tuple[int, ...]) -> TaskType:
    """One task type: its minimum must fit in the grid, its progress model must be valid."""
    path = f"task_types[{i}]"
    if not isinstance(table, dict):
        raise rd.fail(path, "must be a table", "write [[task_types]] tables")
    rd.unknown_keys(table, path, {"name", "minimum", "progress", "edge_speed", "request"})
    name = rd.get(table, "name", path, str)
    minimum = rd.per_resource(table, "minimum", path, resources, low=0)
    for r, m, g in zip(resources, minimum, grid_max):
        if m > g:
            raise rd.fail(f"{path}.minimum.{r}", f"{m} exceeds grid_max.{r} = {g}, so the task could never start",
                          f"lower the minimum or raise grid_max.{r}")
    prog = rd.get(table, "progress", path, dict)
    progress = _progress(rd, prog, f"{path}.progress", name)
    gpu_min = minimum[resources.index("gpu")]
    if progress.model == "throughput" and gpu_min < 1:
        raise rd.fail(f"{path}.minimum.gpu", f"is {gpu_min}, but a throughput model makes no progress on 0 GPUs, "
                      f"so a task started at its minimum would never finish", "set minimum.gpu >= 1")
    return TaskType(name, minimum, progress, edge_speed=tiers.edge_speed(rd, table, path),
                    request=tiers.request(rd, table, path, resources, minimum, grid_max))


_SYNTHETIC_PROFILE_KEYS = {"model", "gpu_scale", "base", "profile_task"}


def _progress(rd: _Reader, prog: dict, ppath: str, task_name: str) -> ProgressSpec:
    """A task type's `progress = {model = ...}`: synthetic parameters, the profile's task name, or a
    throughput table. A key of another model is refused once the model is known."""
    rd.unknown_keys(prog, ppath, _SYNTHETIC_PROFILE_KEYS | tiers.THROUGHPUT_KEYS)
    model = rd.choice(prog, "model", ppath, PROGRESS_MODELS)
    if model == "throughput":
        return tiers.throughput_progress(rd, prog, ppath)
    rd.unknown_keys(prog, f"{ppath} (model = \"{model}\")", _SYNTHETIC_PROFILE_KEYS)
    if model != "synthetic":
        return ProgressSpec(model, profile_task=rd.get(prog, "profile_task", ppath, str, default=task_name))
    spec = ProgressSpec(model, gpu_scale=float(rd.number(prog, "gpu_scale", ppath, 0.0, low=0.0)),
                        base=float(rd.number(prog, "base", ppath, 0.0, low=0.0)))
    if spec.gpu_scale == 0 and spec.base == 0:
        raise rd.fail(ppath, "gpu_scale and base are both 0, so the task never progresses",
                      "set gpu_scale > 0 or base > 0")
    return spec


def _arrivals(rd: _Reader, data: dict, base_dir: Path | None, resolve_files: bool) -> Arrivals:
    """`[arrivals]`: a Poisson rate and task count, or a trace file and how many of its rows."""
    arr = rd.get(data, "arrivals", "", dict, fix="add an [arrivals] table")
    rd.unknown_keys(arr, "arrivals", {"process", "rate", "tasks", "trace"})
    process = rd.choice(arr, "process", "arrivals", ARRIVAL_PROCESSES, default="poisson")
    if process == "poisson":
        rate = rd.number(arr, "rate", "arrivals", low=0.0, strict_low=True, high=MAX_RATE)
        return Arrivals(process, rate=float(rate), tasks=rd.integer(arr, "tasks", "arrivals", low=1, **_TASK_LIMIT))
    trace = rd.get(arr, "trace", "arrivals", str, fix="add `trace = \"arrivals.csv\"`")
    if resolve_files:
        trace = str(resolve_data_path(trace, base_dir))
    return Arrivals(process, tasks=rd.integer(arr, "tasks", "arrivals", default=0, low=0, **_TASK_LIMIT), trace=trace)


_TASK_LIMIT = {"high": MAX_TASKS, "why": " (the limit on tasks per episode)"}


def _profile(rd: _Reader, data: dict, task_types: tuple[TaskType, ...], base_dir: Path | None,
             resolve_files: bool) -> str:
    """Top-level `profile`: required (and resolved) when a task type uses the profile model."""
    profile = rd.get(data, "profile", "", str, default="")
    if any(t.progress.model == "profile" for t in task_types):
        if not profile:
            raise rd.fail("profile", "is missing but a task type uses model = \"profile\"",
                          "add `profile = \"path/to/profile.csv\"`")
        if resolve_files:
            profile = str(resolve_data_path(profile, base_dir))
    return profile


def _settings(rd: _Reader, data: dict) -> dict[str, Any]:
    """The remaining top-level keys, each with its default: the Scenario fields of the same names."""
    return {
        "description": rd.get(data, "description", "", str, default=""),
        "visibility": rd.choice(data, "visibility", "", VISIBILITY_MODES, default="random-subset"),
        "window_size": rd.integer(data, "window_size", "", default=10, low=1),
        "slot_seconds": float(rd.number(data, "slot_seconds", "", default=5.0, low=0.0, strict_low=True)),
        "switch_weight": float(rd.number(data, "switch_weight", "", default=1.0, low=0.0, high=1.0)),
        "allow_preemption": rd.get(data, "allow_preemption", "", bool, default=True),
        "startup_seconds": float(rd.number(data, "startup_seconds", "", default=14.0, low=0.0)),
        "max_slots": rd.integer(data, "max_slots", "", default=100_000, low=1, high=MAX_SLOTS,
                                why=" (the limit on an episode's length)"),
    }


def _uncertainty(rd: _Reader, data: dict, task_types: tuple[TaskType, ...]) -> Uncertainty:
    """`[uncertainty]` (optional): the sigmas of the hidden speed factor and of the work estimate's
    error, and a systematic speed factor per task type. Absent = no uncertainty."""
    table = rd.get(data, "uncertainty", "", dict, default=None, fix="write [uncertainty] as a table")
    if table is None:
        return Uncertainty()
    rd.unknown_keys(table, "uncertainty", {"speed_sigma", "work_sigma", "speed_bias"})
    sigmas = {key: float(rd.number(table, key, "uncertainty", 0.0, low=0.0, high=MAX_SIGMA))
              for key in ("speed_sigma", "work_sigma")}
    names = [t.name for t in task_types]
    bias = rd.get(table, "speed_bias", "uncertainty", dict, default={},
                  fix="write `speed_bias = {TYPE = factor}`, e.g. {" + f"{names[0]} = 0.8" + "}")
    unknown = sorted(set(bias) - set(names))
    if unknown:
        raise rd.fail("uncertainty.speed_bias", f"unknown task type(s) {unknown}",
                      f"use only the scenario's task types {names}")
    # In task-type order, whatever the file's order, so that equal tables give equal scenarios.
    factors = tuple((n, float(rd.number(bias, n, "uncertainty.speed_bias", low=0.0, strict_low=True)))
                    for n in names if n in bias)
    return Uncertainty(sigmas["speed_sigma"], sigmas["work_sigma"], factors)


def _check_startable(scen: Scenario, rd: _Reader) -> None:
    """Every task type must fit on a node of every cluster that may be the only one to see one
    of its tasks (any cluster, unless visibility is "all"), or that task would wait forever: the
    episode would run to max_slots with it unfinished. A cluster whose capacity schedule never
    makes anything available holds no task."""
    for i, t in enumerate(scen.task_types):
        holds = [c.name for c in scen.clusters if tiers.max_share(c.capacity_schedule) > 0
                 and any(all(n >= m for n, m in zip(node, t.minimum)) for node in c.nodes)]
        if not holds:
            raise rd.fail(f"task_types[{i}].minimum", f"task type '{t.name}' fits on no node (of a cluster whose "
                          f"capacity schedule ever makes something available)",
                          "lower its minimum, add a larger node, or give a cluster a schedule with capacity")
        lacking = [c.name for c in scen.clusters if c.name not in holds]
        if lacking and scen.visibility != "all":
            raise rd.fail(f"task_types[{i}].minimum",
                          f"task type '{t.name}' fits only on cluster(s) {holds}, not on {lacking}; with "
                          f"visibility = \"{scen.visibility}\" a task may be seen by cluster '{lacking[0]}' alone, "
                          f"and would then never start",
                          f"lower its minimum, give cluster(s) {lacking} a node that holds it, or set "
                          f"visibility = \"all\"")


def _check_requests(scen: Scenario, rd: _Reader) -> None:
    """A task type's `request` must fit on some node: a deadline rule measures the task's duration
    at it, which would otherwise be the duration of an allocation no task can ever have."""
    for i, t in enumerate(scen.task_types):
        if t.request and not any(all(n >= r for n, r in zip(node, t.request))
                                 for c in scen.clusters for node in c.nodes):
            raise rd.fail(f"task_types[{i}].request", f"{dict(zip(scen.resources, t.request))} of task type "
                          f"'{t.name}' fits on no node", "request no more than the largest node holds")


def _check_arrival_span(scen: Scenario, rd: _Reader) -> None:
    """Poisson arrivals must all come before the episode ends at max_slots: a task that arrives
    later never arrives, so the results would silently cover fewer tasks than asked for (and
    a tiny rate made drawing the workload, slot by slot, run for hours). With a mean of
    rate × max_slots >= 2 × tasks + 30 arrivals by then, fewer than `tasks` arrive with a
    probability below 1e-11 for every task count."""
    arr = scen.arrivals
    if arr.process != "poisson":
        return  # traces: each row's time is checked against max_slots when the file is read
    need = (2 * arr.tasks + 30) / scen.max_slots
    if arr.rate < need:
        raise rd.fail("arrivals.rate",
                      f"{arr.rate:g} tasks per slot would take about {arr.tasks / arr.rate:.3g} slots to bring "
                      f"the {arr.tasks} tasks, but an episode ends at max_slots = {scen.max_slots}",
                      f"set rate >= {need:.3g} (= (2 × tasks + 30) / max_slots, so that every task arrives "
                      f"in time), lower arrivals.tasks, or raise max_slots (at most {MAX_SLOTS})")
