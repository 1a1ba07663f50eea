"""Scenarios: what an edge system looks like and how tasks arrive.

A scenario is a frozen dataclass tree loaded from TOML and validated on load. Built-in
scenarios live in `tapfinger/scenarios/*.toml`; any other TOML file in the same format can be
given by path. `docs/scenario-format.md` and `examples/custom-scenario.toml` document it.
This module holds the dataclasses, the data-path rules, the fingerprint and loading;
`tapfinger.sim.scenario_toml` reads and validates the TOML tables.
"""

from __future__ import annotations

import hashlib
import os
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from tapfinger.sim.textfile import read_text
# The settings of issues 14 and 15 live in tier_settings; importable from here too, beside the others.
from tapfinger.sim.tier_settings import (CAPACITY_CURVES, CLUSTER_KINDS, DEADLINE_RULES,  # noqa: F401
                                         FAULT_EVENTS, SHRINK_RULES, CapacitySchedule, Deadlines, Faults)

VISIBILITY_MODES = ("random-subset", "all", "home")
ARRIVAL_PROCESSES = ("poisson", "trace")
PROGRESS_MODELS = ("synthetic", "profile", "throughput")
# Resources every progress model is indexed by; others (e.g. `mem`) are requirements only.
SPEED_RESOURCES = ("cpu", "gpu")
SHARED_DATA_ENV = "TAPFINGER_SHARED_DATA"
# Size limits, far above real use (the built-ins have <= 2000 tasks, <= 6 per slot, 100000 slots)
# but low enough that drawing a workload takes seconds, not hours: the Poisson stream is drawn
# slot by slot, so its cost grows with tasks / rate. docs/scenario-format.md lists them.
MAX_TASKS = 1_000_000  # tasks per episode
MAX_RATE = 1_000_000.0  # mean new tasks per slot
MAX_SLOTS = 10_000_000  # `max_slots` (1.6 years of 5-second slots)
# `[uncertainty]` sigmas: a log-normal sigma of 3 already spreads a task's speed over a factor of
# e^6 (about 400) either way within two standard deviations; beyond it the model says nothing.
MAX_SIGMA = 3.0


class ScenarioError(ValueError):
    """A scenario is malformed: the message names the file, the key, the problem and the fix."""


@dataclass(frozen=True)
class ProgressSpec:
    model: str
    gpu_scale: float = 0.0  # synthetic: W = tanh(g / gpu_scale); 0 means W = 0
    base: float = 0.0  # synthetic: constant progress per slot
    profile_task: str = ""  # profile: the task's name in the profile table
    # throughput: iterations per second on one cloud GPU at each GPU count (ElasticFlow's tables),
    # linear in between and flat beyond the last; a task is `iterations` iterations of work.
    gpus: tuple[int, ...] = ()
    iterations_per_second: tuple[float, ...] = ()
    iterations: float = 0.0


@dataclass(frozen=True)
class TaskType:
    name: str
    minimum: tuple[int, ...]
    progress: ProgressSpec
    # Throughput on an edge node = edge_speed x throughput on the cloud (EdgeFlow's lambda_i).
    edge_speed: float = 1.0
    # The allocation a user requests (ElasticFlow's "requested GPUs"): what a deadline rule measures
    # the task's duration at. Empty = the minimum.
    request: tuple[int, ...] = ()

    def requested(self) -> tuple[int, ...]:
        return self.request or self.minimum


@dataclass(frozen=True)
class Cluster:
    name: str
    nodes: tuple[tuple[int, ...], ...]
    kind: str = "edge"  # "edge" or "cloud": task types run at their edge_speed on edge nodes
    capacity_schedule: CapacitySchedule = field(default_factory=CapacitySchedule)

    def capacity(self) -> tuple[int, ...]:
        return tuple(sum(col) for col in zip(*self.nodes))


@dataclass(frozen=True)
class Arrivals:
    process: str = "poisson"
    rate: float = 1.0  # poisson: mean new tasks per slot
    tasks: int = 100  # tasks per episode (poisson), or the first `tasks` rows of a trace
    trace: str = ""  # trace: path of an arrival CSV


@dataclass(frozen=True)
class Uncertainty:
    """How far each task's truth deviates from what a scheduler sees (`[uncertainty]`).

    Per task, drawn from a stream of its own (`tapfinger.sim.workload.with_hidden_truth`): a hidden
    speed factor s = bias[type] * LogNormal(-speed_sigma^2 / 2, speed_sigma) (mean `bias`; a task
    with s = 2 runs twice as fast as its type's profile), and an estimate error e =
    LogNormal(-work_sigma^2 / 2, work_sigma) (mean one). The engine runs a task as `work / s` of
    profiled work; schedulers see `work * e`. The default is no uncertainty at all."""

    speed_sigma: float = 0.0
    work_sigma: float = 0.0
    speed_bias: tuple[tuple[str, float], ...] = ()  # (task type name, factor); unlisted types: 1

    def bias_of(self, task_type: str) -> float:
        return dict(self.speed_bias).get(task_type, 1.0)

    @property
    def active(self) -> bool:
        """Whether any task's truth can differ from what schedulers see."""
        return self.speed_sigma > 0 or self.work_sigma > 0 or any(b != 1.0 for _, b in self.speed_bias)


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
    # Hidden per-task truth. Not in the fingerprint: like the arrivals it changes which tasks a
    # policy meets, not the observations, profile or rules it was built for, so a policy trained
    # on hetero-6 can be measured on hetero-6-uncertain.
    uncertainty: Uncertainty = field(default_factory=Uncertainty)
    deadlines: Deadlines = field(default_factory=Deadlines)
    # Admission control: agents may decline a waiting task (it leaves the system, counted as missed).
    allow_decline: bool = False
    # What happens when a node's capacity shrinks below what its running tasks hold.
    on_shrink: str = "preempt"
    # Seconds of no progress after a running task's allocation changes, or a preempted task restarts
    # (ElasticFlow: a few seconds plus ~27 s); and after a restart on the other kind of node (cloud
    # <-> edge: EdgeFlow's migration takes minutes).
    restart_seconds: float = 0.0
    migration_seconds: float = 0.0
    # Failures, slowdowns, departures and checkpoints. Not in the fingerprint (like the arrivals, they
    # change what happens to a policy, not what it is built for: a policy is measured at fault rates
    # it was not trained at).
    faults: Faults = field(default_factory=Faults)
    source: str = field(default="<built-in>", compare=False)

    @property
    def num_clusters(self) -> int:
        return len(self.clusters)

    @property
    def num_resources(self) -> int:
        return len(self.resources)

    def resource_index(self, name: str) -> int:
        return self.resources.index(name)

    @property
    def capacity_varies(self) -> bool:
        return any(c.capacity_schedule.varies for c in self.clusters)

    def with_overrides(self, **changes: Any) -> "Scenario":
        return replace(self, **changes)


# ---------------------------------------------------------------------------------------------
# data paths (`shared:`, `package:`, file-relative) and loading; the TOML tables themselves are
# read by tapfinger/sim/scenario_toml.py


def shared_data_dirs() -> list[Path]:
    """Where `shared:` paths are looked for, in order."""
    dirs = []
    if os.environ.get(SHARED_DATA_ENV):
        chosen = Path(os.environ[SHARED_DATA_ENV]).expanduser()
        # A variable that points nowhere is a mistake to report, not a reason to quietly use
        # whatever copy of the data lies beside the repository instead.
        if not chosen.is_dir():
            what = "is a file" if chosen.exists() else "does not exist"
            raise ScenarioError(
                f"{SHARED_DATA_ENV}={os.environ[SHARED_DATA_ENV]!r}: {what}, so `shared:` data cannot be "
                f"looked up there. Fix: point {SHARED_DATA_ENV} at the shared data folder (the one holding "
                f"tapfinger-testbed/ and philly/), or unset it to use ../shared/data beside the repository")
        dirs.append(chosen)
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
    """Validate parsed TOML `data` into a Scenario (see `tapfinger.sim.scenario_toml`)."""
    # The parser builds the dataclasses above, so it imports this module; importing it here,
    # at call time, keeps the two free of an import cycle.
    from tapfinger.sim import scenario_toml

    return scenario_toml.parse_scenario(data, source, base_dir, resolve_files=resolve_files)


# What the fingerprint covers, in words (for messages that refuse a checkpoint or an exported file).
FINGERPRINT_COVERS = ("resources, clusters and nodes, task types (minimums and progress models, with the "
                      "profile table's content), grid, window, visibility, switch weight, preemption, slot "
                      "and start-up seconds; and where set: cluster kinds, edge speeds, throughput tables, capacity "
                      "schedules, decline, on_shrink, restart and migration seconds")


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


def fingerprint_parts(scenario: Scenario) -> dict[str, Any]:
    """The parts `scenario_fingerprint` hashes, by name, in its order: what a refusal names when
    a checkpoint or exported file was made for a scenario of the same name but other content."""
    return {
        "resources": scenario.resources,
        "cluster nodes": tuple((c.nodes) for c in scenario.clusters),
        "task types and minimums": tuple((t.name, t.minimum) for t in scenario.task_types),
        "grid": scenario.grid_max,
        "window": scenario.window_size,
        # the policy's environment dynamics beyond shapes
        "progress models": tuple((t.progress.model, float(t.progress.gpu_scale), float(t.progress.base),
                                  t.progress.profile_task) for t in scenario.task_types),
        "profile table (sha256)": _profile_digest(scenario),
        "visibility": scenario.visibility,
        "switch weight": float(scenario.switch_weight),
        "preemption": bool(scenario.allow_preemption),
        "slot seconds": float(scenario.slot_seconds),
        "start-up seconds": float(scenario.startup_seconds),
        **_tier_parts(scenario),
    }


def _tier_parts(scenario: Scenario) -> dict[str, Any]:
    """The cloud-edge settings that a policy depends on, each only where it differs from its default,
    so that every scenario without them keeps the fingerprint its shipped checkpoint stores."""
    parts: dict[str, Any] = {}
    if any(c.kind != "edge" for c in scenario.clusters):
        parts["cluster kinds"] = tuple(c.kind for c in scenario.clusters)
    if any(t.edge_speed != 1.0 for t in scenario.task_types):
        parts["edge speeds"] = tuple(float(t.edge_speed) for t in scenario.task_types)
    if any(t.progress.model == "throughput" for t in scenario.task_types):
        parts["throughput tables"] = tuple((t.progress.gpus, t.progress.iterations_per_second,
                                            float(t.progress.iterations)) for t in scenario.task_types)
    if scenario.capacity_varies:
        # the curve's content, not the path of its CSV
        parts["capacity schedules"] = tuple(
            (cs.curve, cs.period_seconds, cs.peak_load, cs.trough_ratio, cs.peak_seconds, cs.start_seconds,
             cs.times, cs.shares) for cs in (c.capacity_schedule for c in scenario.clusters))
    if scenario.allow_decline:
        parts["decline"] = True
    if scenario.capacity_varies and scenario.on_shrink != "preempt":
        parts["on shrink"] = scenario.on_shrink
    if scenario.restart_seconds or scenario.migration_seconds:
        parts["restart and migration seconds"] = (float(scenario.restart_seconds), float(scenario.migration_seconds))
    return parts


def scenario_fingerprint(scenario: Scenario) -> str:
    """What a trained policy depends on: resources, clusters and nodes, task types (name, minimum,
    progress model, and the profile table's content for profile models), grid and window,
    visibility, switch weight, preemption, and the slot and start-up seconds (which shape the
    progress tables). Not the arrivals (a policy serves any episode length or rate), nor the
    `[uncertainty]` (hidden per-task truth: it changes the tasks, as arrivals do), nor names
    and descriptions of the scenario or its clusters, nor `max_slots`. The hash of the tuple of
    `fingerprint_parts` (the value the shipped checkpoints store)."""
    return hashlib.sha256(repr(tuple(fingerprint_parts(scenario).values())).encode()).hexdigest()[:16]


def builtin_names() -> list[str]:
    folder = resources.files("tapfinger").joinpath("scenarios")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def builtin_text(name: str) -> str:
    return resources.files("tapfinger").joinpath("scenarios", f"{name}.toml").read_text(encoding="utf-8")


def _read_toml_text(path: Path) -> str:
    """A scenario file's text. TOML is UTF-8; a leading byte-order mark (which some Windows
    editors write) is dropped rather than reported as "Invalid statement at line 1". The caller
    has already told a directory or a missing path apart from a built-in name."""
    return read_text(path, "scenario", ScenarioError, fix_missing="check the path",
                     fix_encoding="save the file as UTF-8 (TOML files are UTF-8)")


def load_scenario(name_or_path: str | Path, resolve_files: bool = True) -> Scenario:
    """Load a built-in scenario by name, or a TOML file by path."""
    spec = str(name_or_path)
    if spec in builtin_names():
        text, source, base_dir = builtin_text(spec), f"<built-in {spec}>", None
    elif spec in _geo_builtin_names():
        raise _geo_refusal(spec)
    else:
        path = Path(spec)
        if path.is_dir():
            raise ScenarioError(f"scenario {spec}: is a directory, not a TOML file. Fix: give the path of "
                                f"a scenario file, e.g. {path / 'my-scenario.toml'}")
        if not path.is_file():
            raise ScenarioError(f"unknown scenario '{spec}': not a built-in name and no such file. Fix: use "
                                f"one of {', '.join(builtin_names())} (see `tapfinger scenarios`), or a "
                                f"path to a TOML scenario file.")
        text, source, base_dir = _read_toml_text(path), str(path), path.resolve().parent
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {source}: not valid TOML ({exc}). Fix: correct the syntax.") from None
    if data.get("family") == "geo":
        raise _geo_refusal(source)
    return parse_scenario(data, source, base_dir, resolve_files=resolve_files)


def _geo_builtin_names() -> list[str]:
    folder = resources.files("tapfinger").joinpath("scenarios", "geo")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _geo_refusal(source: str) -> ScenarioError:
    """A geo scenario (issue 16) is another model: distributed jobs over sites, not tasks on clusters."""
    return ScenarioError(f"scenario {source} is a geo-distributed scenario (family = \"geo\"): this command "
                         f"runs edge-cluster scenarios only. Fix: run it with `tapfinger evaluate --scenario "
                         f"{source}` or load it with tapfinger.sim.geo.scenario.load_geo_scenario")
