"""Shared test helpers: small scenarios, hand-made workloads, random feasible actions."""

from __future__ import annotations

import dataclasses

import numpy as np

from tapfinger.engine import Engine
from tapfinger.scenario import Scenario, load_scenario
from tapfinger.workload import Workload


def small(name: str, tasks: int = 30, **changes) -> Scenario:
    sc = load_scenario(name)
    return dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=tasks), **changes)


def workload(scenario: Scenario, tasks: list[tuple[int, str, list[int]]]) -> Workload:
    """tasks: (arrival slot, type name, visible cluster indices)."""
    names = [t.name for t in scenario.task_types]
    vis = np.zeros((len(tasks), scenario.num_clusters), dtype=bool)
    for i, (_, _, clusters) in enumerate(tasks):
        vis[i, clusters] = True
    return Workload(
        arrival_slot=np.array([t[0] for t in tasks], dtype=np.int64),
        task_type=np.array([names.index(t[1]) for t in tasks], dtype=np.int64),
        visible=vis, work=np.ones(len(tasks)), deadline=np.full(len(tasks), -1, dtype=np.int64))


def engine_with(name: str, tasks: list[tuple[int, str, list[int]]], strict: bool = True, **changes) -> Engine:
    sc = load_scenario(name)
    if changes:
        sc = dataclasses.replace(sc, **changes)
    eng = Engine(sc, strict=strict)
    eng.reset(0, workload=workload(sc, tasks))
    return eng


def idle(eng: Engine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.full(eng.N, -1, dtype=np.int64), np.zeros(eng.N, dtype=np.int64),
            np.zeros((eng.N, eng.R), dtype=np.int64))


def start(eng: Engine, starts: dict[int, tuple[int, int, list[int]]], realloc=None) -> bool:
    """Play one round; starts maps agent -> (window place, node, allocation)."""
    task, node, alloc = idle(eng)
    for a, (place, n, al) in starts.items():
        task[a], node[a], alloc[a] = place, n, al
    return eng.play_round(task, node, alloc, realloc)


def end_slot(eng: Engine) -> None:
    assert eng.play_round(*idle(eng)) is True


def random_feasible_env_action(obs: dict, rng: np.random.Generator) -> dict:
    """A uniformly random action among those the masks allow (PettingZoo Dict format)."""
    choices = np.flatnonzero(obs["task_mask"])
    task = int(rng.choice(choices))
    if task == 0:
        return {"task": 0, "node": 0, "alloc": np.zeros(obs["alloc_low"].shape[1], dtype=np.int64)}
    nodes = np.flatnonzero(obs["node_mask"][task - 1])
    node = int(rng.choice(nodes))
    low, high = obs["alloc_low"][task - 1], obs["alloc_high"][node]
    return {"task": task, "node": node, "alloc": rng.integers(low, high + 1)}
