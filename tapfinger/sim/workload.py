"""Arrival streams: which tasks arrive when, of which type, seen by which clusters.

The whole stream of an episode is drawn up front from its own generator, so it depends on
the seed alone and never on the scheduler's actions (common random numbers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tapfinger.sim.scenario import MAX_RATE, MAX_SLOTS, MAX_TASKS, Scenario, ScenarioError


@dataclass(frozen=True)
class Workload:
    arrival_slot: np.ndarray  # [T] int, non-decreasing
    task_type: np.ndarray  # [T] int
    visible: np.ndarray  # [T, N] bool
    work: np.ndarray  # [T] float, amount of work relative to the task type (1 = as profiled)
    deadline: np.ndarray  # [T] int, absolute slot by which the task should finish, -1 = none

    @property
    def num_tasks(self) -> int:
        return int(self.arrival_slot.shape[0])


def _visible_sets(rng: np.random.Generator, count: int, num_clusters: int, mode: str,
                  home: np.ndarray | None = None) -> np.ndarray:
    vis = np.zeros((count, num_clusters), dtype=bool)
    if mode == "all":
        vis[:] = True
    elif mode == "home":
        homes = home if home is not None else rng.integers(num_clusters, size=count)
        vis[np.arange(count), homes] = True
    else:  # random-subset: k uniform on {1..N}, then a uniform k-subset
        for i in range(count):
            k = int(rng.integers(1, num_clusters + 1))
            vis[i, rng.choice(num_clusters, size=k, replace=False)] = True
    return vis


def poisson_workload(scenario: Scenario, rng: np.random.Generator) -> Workload:
    """Per slot Poisson(rate) new tasks until the episode's task count; types uniform."""
    _check_poisson(scenario)
    total = scenario.arrivals.tasks
    n_clusters = scenario.num_clusters
    slots: list[int] = []
    types: list[int] = []
    vis_rows: list[np.ndarray] = []
    slot = 0
    while len(slots) < total:
        if slot >= MAX_SLOTS:
            raise ScenarioError(f"scenario {scenario.source}: only {len(slots)} of {total} tasks arrived in "
                                f"{MAX_SLOTS} slots at rate {scenario.arrivals.rate:g}. Fix: raise arrivals.rate "
                                f"or lower arrivals.tasks")
        n = min(int(rng.poisson(scenario.arrivals.rate)), total - len(slots))
        for _ in range(n):
            slots.append(slot)
            types.append(int(rng.integers(len(scenario.task_types))))
            vis_rows.append(_visible_sets(rng, 1, n_clusters, scenario.visibility)[0])
        slot += 1
    return Workload(
        arrival_slot=np.asarray(slots, dtype=np.int64),
        task_type=np.asarray(types, dtype=np.int64),
        visible=np.asarray(vis_rows, dtype=bool).reshape(total, n_clusters),
        work=np.ones(total),
        deadline=np.full(total, -1, dtype=np.int64),
    )


def _check_poisson(scenario: Scenario) -> None:
    """The limits a TOML file is held to (tapfinger/sim/scenario_toml.py), for scenarios built
    in code (`with_overrides`): past them the stream below would take hours and all memory."""
    arr = scenario.arrivals
    if not 1 <= arr.tasks <= MAX_TASKS or not (0 < arr.rate <= MAX_RATE):  # NaN fails the rate test
        raise ScenarioError(f"scenario {scenario.source}: arrivals.tasks = {arr.tasks}, arrivals.rate = "
                            f"{arr.rate:g}. Fix: use 1 <= tasks <= {MAX_TASKS} and 0 < rate <= {MAX_RATE:g}")


def make_workload(scenario: Scenario, seed: int) -> Workload:
    """The arrival stream of an episode: a function of the scenario and the seed only."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A9F]))
    if scenario.arrivals.process == "poisson":
        return poisson_workload(scenario, rng)
    from tapfinger.sim.traces import trace_workload  # only trace scenarios need the reader

    return trace_workload(scenario, rng)
