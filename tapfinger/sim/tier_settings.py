"""The settings of a scenario beyond the paper's (issues 14 and 15), as frozen dataclasses: a
cluster's capacity schedule, the deadline rule, and the fault model. `tapfinger.sim.scenario`
holds them in its `Cluster` and `Scenario`; `scenario_toml_tiers` and `scenario_toml_faults` read
them from TOML; the engine's `tiers` mixin, `capacity` and `faults` modules give them effect.
"""

from __future__ import annotations

from dataclasses import dataclass

CLUSTER_KINDS = ("edge", "cloud")
CAPACITY_CURVES = ("constant", "tidal", "csv")
SHRINK_RULES = ("preempt", "shrink")
DEADLINE_RULES = ("none", "elasticflow")


@dataclass(frozen=True)
class CapacitySchedule:
    """The share of a cluster's capacity available over time (`capacity = {...}` of a cluster).

    `constant`: all of it, always. `tidal`: the owner's own load follows the day,
    load(t) = peak_load * (trough_ratio + (1 - trough_ratio) * (1 + cos(2 pi (t - peak_seconds) / period_seconds)) / 2),
    so at `peak_seconds` the load is `peak_load` and half a period later `peak_load * trough_ratio`
    (EdgeFlow: edge load at midnight is about 1/50 of the peak); the available share is 1 - load.
    `csv`: a step function read from a file of (time_seconds, available) rows, each value holding
    until the next row (the first row's time must be 0). t is seconds since the episode's start
    plus `start_seconds`. `tapfinger/sim/capacity.py` turns the share into node capacities."""

    curve: str = "constant"
    period_seconds: float = 86_400.0
    peak_load: float = 0.0
    trough_ratio: float = 1.0
    peak_seconds: float = 0.0
    start_seconds: float = 0.0
    file: str = ""  # csv: the resolved path
    times: tuple[float, ...] = ()  # csv: the rows, read on load
    shares: tuple[float, ...] = ()

    @property
    def varies(self) -> bool:
        return self.curve != "constant"


@dataclass(frozen=True)
class Deadlines:
    """How Poisson tasks (and trace rows without a deadline) get a deadline (`[deadlines]`).

    `elasticflow` (ElasticFlow's rule): deadline = arrival + floor(U(slack_low, slack_high) x duration),
    duration = the slots the task needs alone at its type's requested allocation on a cloud node
    (at least one slot); a share `1 - fraction` of the tasks is best-effort (no deadline). Drawn from
    a stream of its own, so the arrivals of a seed are those of the scenario without deadlines."""

    rule: str = "none"
    slack_low: float = 0.5
    slack_high: float = 1.5
    fraction: float = 1.0


FAULT_EVENTS = ("fail", "repair", "slow", "recover", "leave", "join")


@dataclass(frozen=True)
class Faults:
    """Unplanned changes of nodes (`[faults]`; issue 15, adaptive scheduling on unreliable edge nodes).

    Per node of the listed clusters (all when empty), from a random stream of the episode's seed alone,
    so every policy of a seed meets the same faults: failures every Exp(mtbf_seconds), each repaired
    after Exp(repair_seconds); slowdowns every Exp(slowdown_mtbf_seconds) to `slowdown_factor` of the
    node's speed for Exp(slowdown_seconds); departures every Exp(leave_mtbf_seconds), back after
    Exp(absence_seconds) (a mobile device that leaves; of the nodes of `leave_clusters` when given). Or the events of a file, replayed
    (`events`: (time_seconds, global node, event, value), event in FAULT_EVENTS). A failure loses the
    progress its tasks made since their last checkpoint; a departure is announced, so its tasks keep
    theirs. A running task checkpoints after every `checkpoint_seconds` of running (0 = never: a
    failure loses all its progress), each checkpoint costing `checkpoint_cost_seconds` of no progress
    in the slot it is taken in."""

    clusters: tuple[str, ...] = ()
    mtbf_seconds: float = 0.0
    repair_seconds: float = 0.0
    slowdown_mtbf_seconds: float = 0.0
    slowdown_seconds: float = 0.0
    slowdown_factor: float = 0.5
    leave_mtbf_seconds: float = 0.0
    absence_seconds: float = 0.0
    leave_clusters: tuple[str, ...] = ()  # whose nodes leave (empty = those of `clusters`)
    events: tuple[tuple[float, int, str, float], ...] = ()
    file: str = ""  # the event file's resolved path (its rows are `events`)
    checkpoint_seconds: float = 0.0
    checkpoint_cost_seconds: float = 0.0
    # seconds of no progress when a task a failure or departure stopped starts again (loading its
    # checkpoint, a container start), on top of the scenario's restart_seconds
    restart_seconds: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.events) or any(x > 0 for x in (self.mtbf_seconds, self.slowdown_mtbf_seconds,
                                                        self.leave_mtbf_seconds))
