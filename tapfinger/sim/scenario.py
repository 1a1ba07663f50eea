"""Scenarios: what an edge system looks like and how tasks arrive.

A scenario is a frozen dataclass tree loaded from TOML and validated on load. Built-in
scenarios live in `tapfinger/scenarios/*.toml`; any other TOML file in the same format can be
given by path. `docs/scenario-format.md` and `examples/custom-scenario.toml` document it.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

VISIBILITY_MODES = ("random-subset", "all", "home")
ARRIVAL_PROCESSES = ("poisson", "trace")
PROGRESS_MODELS = ("synthetic", "profile")
# Resources every progress model is indexed by; others (e.g. `mem`) are requirements only.
SPEED_RESOURCES = ("cpu", "gpu")
SHARED_DATA_ENV = "TAPFINGER_SHARED_DATA"


class ScenarioError(ValueError):
    """A scenario is malformed: the message names the file, the key, the problem and the fix."""


@dataclass(frozen=True)
class ProgressSpec:
    model: str
    gpu_scale: float = 0.0  # synthetic: W = tanh(g / gpu_scale); 0 means W = 0
    base: float = 0.0  # synthetic: constant progress per slot
    profile_task: str = ""  # profile: the task's name in the profile table


@dataclass(frozen=True)
class TaskType:
    name: str
    minimum: tuple[int, ...]
    progress: ProgressSpec


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: tuple[tuple[int, ...], ...]

    def capacity(self) -> tuple[int, ...]:
        return tuple(sum(col) for col in zip(*self.nodes))


@dataclass(frozen=True)
class Arrivals:
    process: str = "poisson"
    rate: float = 1.0  # poisson: mean new tasks per slot
    tasks: int = 100  # tasks per episode (poisson), or the first `tasks` rows of a trace
    trace: str = ""  # trace: path of an arrival CSV


@dataclass(frozen=True)
class Scenario:
    name: str
    resources: tuple[str, ...]
    clusters: tuple[Cluster, ...]
    task_types: tuple[TaskType, ...]
    arrivals: Arrivals
    grid_max: tuple[int, ...]
    description: str = ""
    visibility: str = "random-subset"
    window_size: int = 10
    slot_seconds: float = 5.0
    switch_weight: float = 1.0
    allow_preemption: bool = True
    profile: str = ""  # path of a profile CSV (resolved), needed by `profile` progress models
    startup_seconds: float = 14.0
    max_slots: int = 100_000
    source: str = field(default="<built-in>", compare=False)

    @property
    def num_clusters(self) -> int:
        return len(self.clusters)

    @property
    def num_resources(self) -> int:
        return len(self.resources)

    def resource_index(self, name: str) -> int:
        return self.resources.index(name)

    def with_overrides(self, **changes: Any) -> "Scenario":
        return replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# loading and validation


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
        if low is not None and (value < low or (strict_low and value <= low)):
            op = ">" if strict_low else ">="
            raise self.fail(full, f"must be {op} {low}, got {value}", f"set it {op} {low}")
        if high is not None and value > high:
            raise self.fail(full, f"must be <= {high}, got {value}", f"set it <= {high}")
        return value

    def integer(self, table: dict, key: str, path: str, default: Any = ..., *, low: int | None = None) -> int:
        value = self.get(table, key, path, int, default)
        full = f"{path}.{key}" if path else key
        if low is not None and value < low:
            raise self.fail(full, f"must be an integer >= {low}, got {value}", f"set it >= {low}")
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


def shared_data_dirs() -> list[Path]:
    """Where `shared:` paths are looked for, in order."""
    dirs = []
    if os.environ.get(SHARED_DATA_ENV):
        dirs.append(Path(os.environ[SHARED_DATA_ENV]))
    repo_root = Path(__file__).resolve().parents[2]
    dirs += [repo_root.parent / "shared" / "data", Path.cwd().parent / "shared" / "data",
             Path.cwd() / "shared" / "data"]
    return dirs


def resolve_data_path(spec: str, base_dir: Path | None) -> Path:
    """Resolve `shared:REL`, `package:REL`, absolute or (file-)relative paths."""
    if spec.startswith("shared:"):
        rel = spec[len("shared:"):]
        tried = [d / rel for d in shared_data_dirs()]
        for cand in tried:
            if cand.is_file():
                return cand
        raise ScenarioError(
            f"data file '{rel}' not found; looked in: {', '.join(str(t) for t in tried)}. Fix: set "
            f"{SHARED_DATA_ENV}=/path/to/shared/data, or copy the scenario "
            f"(`tapfinger scenarios --show NAME > my.toml`) and set `profile` to the file's path.")
    if spec.startswith("package:"):
        return Path(str(resources.files("tapfinger").joinpath(spec[len("package:"):])))
    path = Path(spec).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return path


def parse_scenario(data: dict, source: str, base_dir: Path | None = None,
                   resolve_files: bool = True) -> Scenario:
    rd = _Reader(source)
    rd.unknown_keys(data, "", {
        "name", "description", "resources", "clusters", "task_types", "arrivals", "grid_max",
        "visibility", "window_size", "slot_seconds", "switch_weight", "allow_preemption",
        "profile", "startup_seconds", "max_slots"})
    name = rd.get(data, "name", "", str)
    res = rd.get(data, "resources", "", list, fix='add `resources = ["cpu", "gpu"]`')
    if not all(isinstance(r, str) for r in res) or len(set(res)) != len(res):
        raise rd.fail("resources", f"must be a list of distinct names, got {res!r}", 'write e.g. ["cpu", "gpu", "mem"]')
    for needed in SPEED_RESOURCES:
        if needed not in res:
            raise rd.fail("resources", f"lacks '{needed}' (progress models are indexed by cpu and gpu)",
                          f"add \"{needed}\" to resources")
    resources_t = tuple(res)
    grid_max = rd.per_resource(data, "grid_max", "", resources_t, low=1)

    clusters_raw = rd.get(data, "clusters", "", list, fix="add one [[clusters]] table per cluster")
    if not clusters_raw:
        raise rd.fail("clusters", "is empty", "add at least one [[clusters]] table")
    clusters = []
    for i, c in enumerate(clusters_raw):
        path = f"clusters[{i}]"
        if not isinstance(c, dict):
            raise rd.fail(path, "must be a table", "write [[clusters]] tables")
        rd.unknown_keys(c, path, {"name", "nodes"})
        cname = rd.get(c, "name", path, str, default=f"c{i}")
        nodes_raw = rd.get(c, "nodes", path, list, fix="add `nodes = [{cpu = 16, gpu = 16}]`")
        if not nodes_raw:
            raise rd.fail(f"{path}.nodes", "is empty", "give the cluster at least one node")
        nodes = []
        for j, n in enumerate(nodes_raw):
            if not isinstance(n, dict):
                raise rd.fail(f"{path}.nodes[{j}]", "must be an inline table", "write {cpu = 16, gpu = 16}")
            nodes.append(rd.resource_vector(n, f"{path}.nodes[{j}]", resources_t, low=0))
        clusters.append(Cluster(cname, tuple(nodes)))
    if len({c.name for c in clusters}) != len(clusters):
        raise rd.fail("clusters", "cluster names repeat", "give every cluster a distinct name")

    types_raw = rd.get(data, "task_types", "", list, fix="add one [[task_types]] table per task type")
    if not types_raw:
        raise rd.fail("task_types", "is empty", "add at least one [[task_types]] table")
    task_types = []
    for i, t in enumerate(types_raw):
        path = f"task_types[{i}]"
        if not isinstance(t, dict):
            raise rd.fail(path, "must be a table", "write [[task_types]] tables")
        rd.unknown_keys(t, path, {"name", "minimum", "progress"})
        tname = rd.get(t, "name", path, str)
        minimum = rd.per_resource(t, "minimum", path, resources_t, low=0)
        for r, m, g in zip(resources_t, minimum, grid_max):
            if m > g:
                raise rd.fail(f"{path}.minimum.{r}", f"{m} exceeds grid_max.{r} = {g}, so the task could never start",
                              f"lower the minimum or raise grid_max.{r}")
        prog = rd.get(t, "progress", path, dict)
        ppath = f"{path}.progress"
        rd.unknown_keys(prog, ppath, {"model", "gpu_scale", "base", "profile_task"})
        model = rd.choice(prog, "model", ppath, PROGRESS_MODELS)
        if model == "synthetic":
            spec = ProgressSpec(model, gpu_scale=float(rd.number(prog, "gpu_scale", ppath, 0.0, low=0.0)),
                                base=float(rd.number(prog, "base", ppath, 0.0, low=0.0)))
            if spec.gpu_scale == 0 and spec.base == 0:
                raise rd.fail(ppath, "gpu_scale and base are both 0, so the task never progresses",
                              "set gpu_scale > 0 or base > 0")
        else:
            spec = ProgressSpec(model, profile_task=rd.get(prog, "profile_task", ppath, str, default=tname))
        task_types.append(TaskType(tname, minimum, spec))
    if len({t.name for t in task_types}) != len(task_types):
        raise rd.fail("task_types", "task type names repeat", "give every task type a distinct name")

    arr = rd.get(data, "arrivals", "", dict, fix="add an [arrivals] table")
    rd.unknown_keys(arr, "arrivals", {"process", "rate", "tasks", "trace"})
    process = rd.choice(arr, "process", "arrivals", ARRIVAL_PROCESSES, default="poisson")
    if process == "poisson":
        arrivals = Arrivals(process, rate=float(rd.number(arr, "rate", "arrivals", low=0.0, strict_low=True)),
                            tasks=rd.integer(arr, "tasks", "arrivals", low=1))
    else:
        trace = rd.get(arr, "trace", "arrivals", str, fix="add `trace = \"arrivals.csv\"`")
        if resolve_files:
            trace = str(resolve_data_path(trace, base_dir))
        arrivals = Arrivals(process, tasks=rd.integer(arr, "tasks", "arrivals", default=0, low=0), trace=trace)

    profile = rd.get(data, "profile", "", str, default="")
    if any(t.progress.model == "profile" for t in task_types):
        if not profile:
            raise rd.fail("profile", "is missing but a task type uses model = \"profile\"",
                          "add `profile = \"path/to/profile.csv\"`")
        if resolve_files:
            profile = str(resolve_data_path(profile, base_dir))
    scen = Scenario(
        name=name,
        description=rd.get(data, "description", "", str, default=""),
        resources=resources_t,
        clusters=tuple(clusters),
        task_types=tuple(task_types),
        arrivals=arrivals,
        grid_max=grid_max,
        visibility=rd.choice(data, "visibility", "", VISIBILITY_MODES, default="random-subset"),
        window_size=rd.integer(data, "window_size", "", default=10, low=1),
        slot_seconds=float(rd.number(data, "slot_seconds", "", default=5.0, low=0.0, strict_low=True)),
        switch_weight=float(rd.number(data, "switch_weight", "", default=1.0, low=0.0, high=1.0)),
        allow_preemption=rd.get(data, "allow_preemption", "", bool, default=True),
        profile=profile,
        startup_seconds=float(rd.number(data, "startup_seconds", "", default=14.0, low=0.0)),
        max_slots=rd.integer(data, "max_slots", "", default=100_000, low=1),
        source=source,
    )
    _check_startable(scen, rd)
    return scen


def _check_startable(scen: Scenario, rd: _Reader) -> None:
    """Every task type must fit on at least one node, or its tasks would wait forever."""
    for i, t in enumerate(scen.task_types):
        if not any(all(n >= m for n, m in zip(node, t.minimum)) for c in scen.clusters for node in c.nodes):
            raise rd.fail(f"task_types[{i}].minimum", f"task type '{t.name}' fits on no node",
                          "lower its minimum or add a larger node")


# What the fingerprint covers, in words (for messages that refuse a checkpoint or an exported file).
FINGERPRINT_COVERS = ("resources, clusters and nodes, task types (minimums and progress models, with the "
                      "profile table's content), grid, window, visibility, switch weight, preemption, slot "
                      "and start-up seconds")


def _profile_digest(scenario: Scenario) -> str:
    """sha256 of the profile table's bytes, when a task type reads it ("" when none does).

    The content, not the path: a copy of the same table elsewhere is the same scenario, and an
    edited table at the same path is not. An unreadable file is fingerprinted by its path (the
    engine refuses to build such a scenario anyway)."""
    if not any(t.progress.model == "profile" for t in scenario.task_types):
        return ""
    try:
        return hashlib.sha256(Path(scenario.profile).read_bytes()).hexdigest()
    except OSError:
        return f"unreadable:{scenario.profile}"


def scenario_fingerprint(scenario: Scenario) -> str:
    """What a trained policy depends on: resources, clusters and nodes, task types (name, minimum,
    progress model, and the profile table's content for profile models), grid and window,
    visibility, switch weight, preemption, and the slot and start-up seconds (which shape the
    progress tables). Not the arrivals (a policy serves any episode length or rate), nor names
    and descriptions of the scenario or its clusters, nor `max_slots`."""
    parts = (scenario.resources, tuple((c.nodes) for c in scenario.clusters),
             tuple((t.name, t.minimum) for t in scenario.task_types), scenario.grid_max, scenario.window_size,
             # the policy's environment dynamics beyond shapes
             tuple((t.progress.model, float(t.progress.gpu_scale), float(t.progress.base), t.progress.profile_task)
                   for t in scenario.task_types),
             _profile_digest(scenario), scenario.visibility, float(scenario.switch_weight),
             bool(scenario.allow_preemption), float(scenario.slot_seconds), float(scenario.startup_seconds))
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def builtin_names() -> list[str]:
    folder = resources.files("tapfinger").joinpath("scenarios")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def builtin_text(name: str) -> str:
    return resources.files("tapfinger").joinpath("scenarios", f"{name}.toml").read_text()


def load_scenario(name_or_path: str | Path, resolve_files: bool = True) -> Scenario:
    """Load a built-in scenario by name, or a TOML file by path."""
    spec = str(name_or_path)
    if spec in builtin_names():
        text, source, base_dir = builtin_text(spec), f"<built-in {spec}>", None
    else:
        path = Path(spec)
        if not path.is_file():
            raise ScenarioError(f"unknown scenario '{spec}': not a built-in name and no such file. Fix: use "
                                f"one of {', '.join(builtin_names())} (see `tapfinger scenarios`), or a "
                                f"path to a TOML scenario file.")
        text, source, base_dir = path.read_text(), str(path), path.resolve().parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {source}: not valid TOML ({exc}). Fix: correct the syntax.") from None
    return parse_scenario(data, source, base_dir, resolve_files=resolve_files)
