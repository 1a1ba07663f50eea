"""The fault events of an episode: failures and repairs, slowdowns, departures and returns of nodes.

A `FaultTimeline` is built from the scenario's `[faults]` and the episode's seed alone (common
random numbers: every policy of a seed meets the same faults). Generated events are drawn lazily,
node by node and process by process, each from a generator of its own (seed, FAULT_STREAM, node,
process), so an episode pays only for the time it lasts and no draw depends on another; a replayed
event file gives its rows as they are. The engine asks for the events of each slot at its end
(`events_until`) and keeps the nodes' state (`NodeState`): whether a node is up, present and how
fast it runs. What the events do to running tasks is the engine's (tapfinger/sim/tiers.py).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace

import numpy as np

from tapfinger.sim.scenario import Scenario

FAULT_STREAM = 0xFA17
# The processes of a node: (event that starts it, event that ends it, mean time between starts,
# mean length). Indices are part of each generator's seed.
_PROCESSES = ("failure", "slowdown", "departure")


@dataclass(eq=False)
class NodeState:
    """Per node: failed (until repaired), away (left, until it joins) and speed factor (slowdowns)."""

    failed: np.ndarray  # [nodes] bool
    away: np.ndarray  # [nodes] bool
    speed: np.ndarray  # [nodes] float, 1 = as profiled

    @classmethod
    def healthy(cls, nodes: int) -> "NodeState":
        return cls(np.zeros(nodes, dtype=bool), np.zeros(nodes, dtype=bool), np.ones(nodes))

    @property
    def up(self) -> np.ndarray:
        return ~(self.failed | self.away)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NodeState) and all(
            np.array_equal(getattr(self, k), getattr(other, k)) for k in ("failed", "away", "speed"))

    def copy(self) -> "NodeState":
        return NodeState(self.failed.copy(), self.away.copy(), self.speed.copy())


def fault_nodes(scenario: Scenario, num_nodes: int, node_cluster: np.ndarray, departures: bool = False) -> np.ndarray:
    """Global indices of the nodes that may fail (those of `[faults] clusters`, or all); with
    `departures`, those that may leave (`leave_clusters`, else the same)."""
    wanted = (departures and scenario.faults.leave_clusters) or scenario.faults.clusters
    if not wanted:
        return np.arange(num_nodes)
    names = [c.name for c in scenario.clusters]
    return np.flatnonzero(np.isin(node_cluster, [names.index(n) for n in wanted]))


class FaultTimeline:
    """The episode's fault events in time order, drawn as far as they are asked for."""

    def __init__(self, scenario: Scenario, seed: int, num_nodes: int, node_cluster: np.ndarray):
        f = scenario.faults
        self._replay = sorted(f.events, key=lambda e: e[0])
        self._next = 0
        self._heap: list[tuple[float, int, int, int]] = []  # (time, node, process, 0 start / 1 end)
        self._rngs: dict[tuple[int, int], np.random.Generator] = {}
        self._means = {0: (f.mtbf_seconds, f.repair_seconds), 1: (f.slowdown_mtbf_seconds, f.slowdown_seconds),
                       2: (f.leave_mtbf_seconds, f.absence_seconds)}
        self.slowdown_factor = f.slowdown_factor
        self.seed = seed
        for proc, (gap, _) in self._means.items():
            if gap > 0:
                for node in fault_nodes(scenario, num_nodes, node_cluster, departures=proc == 2):
                    self._push(int(node), proc, 0, 0.0)

    def _draw(self, node: int, proc: int, mean: float) -> float:
        key = (node, proc)
        if key not in self._rngs:
            self._rngs[key] = np.random.default_rng(np.random.SeedSequence([self.seed, FAULT_STREAM, node, proc]))
        return float(self._rngs[key].exponential(mean)) if mean > 0 else 0.0

    def _push(self, node: int, proc: int, phase: int, now: float) -> None:
        gap, length = self._means[proc]
        heapq.heappush(self._heap, (now + self._draw(node, proc, gap if phase == 0 else length), node, proc, phase))

    def events_until(self, seconds: float) -> list[tuple[float, int, str, float]]:
        """The events at times before `seconds` not given yet, in time order: (time, node, event, value)."""
        out: list[tuple[float, int, str, float]] = []
        while self._next < len(self._replay) and self._replay[self._next][0] < seconds:
            out.append(self._replay[self._next])
            self._next += 1
        while self._heap and self._heap[0][0] < seconds:
            t, node, proc, phase = heapq.heappop(self._heap)
            name = (("fail", "repair"), ("slow", "recover"), ("leave", "join"))[proc][phase]
            out.append((t, node, name, self.slowdown_factor if name == "slow" else 0.0))
            self._push(node, proc, 1 - phase, t)
        out.sort(key=lambda e: e[0])
        return out


def apply_event(state: NodeState, node: int, event: str, value: float) -> None:
    """Change `state` by one event (an event that changes nothing, e.g. a repair of a node that is
    up, is allowed: a replayed file may hold one)."""
    if event == "fail":
        state.failed[node] = True
    elif event == "repair":
        state.failed[node] = False
    elif event == "slow":
        state.speed[node] = value
    elif event == "recover":
        state.speed[node] = 1.0
    elif event == "leave":
        state.away[node] = True
    elif event == "join":
        state.away[node] = False
    else:
        raise ValueError(f"unknown fault event {event!r}. Fix: use one of fail, repair, slow, recover, leave, join")


def fault_scaled(scenario: Scenario, scale: float) -> Scenario:
    """`scenario` with its faults `scale` times as frequent: the mean time between events of every
    fault process (failures, slowdowns, departures) divided by `scale`; repair, slowdown and absence
    durations, checkpoints and restart costs stay. 0 = no faults (the checkpoints are still taken and
    paid for: the system is the same, its nodes never fail). 1 = `scenario` itself. A scenario that
    replays an event file has no rate to scale: only 0 and 1 apply to it."""
    if scale == 1:
        return scenario
    f = scenario.faults
    if not np.isfinite(scale) or scale < 0:
        raise ValueError(f"a fault scale must be 0 or more (0 = no faults), not {scale!r}. Fix: pass "
                         f"--fault-scales with such values, e.g. --fault-scales 0 1 2")
    if not f.active:
        raise ValueError(f"a fault scale ({scale:g}) needs a scenario with faults; '{scenario.name}' has no active "
                         f"[faults] table. Fix: drop --fault-scales, or train on a scenario with faults "
                         f"(e.g. edge-faulty)")
    if scale == 0:
        off = replace(f, mtbf_seconds=0.0, slowdown_mtbf_seconds=0.0, leave_mtbf_seconds=0.0, events=())
        return scenario.with_overrides(faults=off)
    if f.events:
        raise ValueError(f"'{scenario.name}' replays a fault event file ({f.file or 'events'}), which has no rate to "
                         f"scale by {scale:g}. Fix: use fault scales 0 and 1 only, or a scenario whose [faults] "
                         f"draws events (mtbf_seconds, slowdown_mtbf_seconds, leave_mtbf_seconds)")
    return scenario.with_overrides(faults=replace(
        f, mtbf_seconds=f.mtbf_seconds / scale, slowdown_mtbf_seconds=f.slowdown_mtbf_seconds / scale,
        leave_mtbf_seconds=f.leave_mtbf_seconds / scale))
