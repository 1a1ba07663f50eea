"""Checking an optimal schedule against the model, and playing it in the engine."""

from __future__ import annotations

import numpy as np

from envs.actions import RoundActions
from envs.episode import run_episode
from tapfinger.evaluation.optimal.solve import OptimalSchedule
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import Scenario
from tapfinger.sim.speed import slot_table
from tapfinger.sim.tables import static_tables
from tapfinger.sim.workload import Workload


def check_schedule(scenario: Scenario, workload: Workload, sched: OptimalSchedule) -> None:
    """Raise AssertionError unless `sched` respects every constraint of the model."""
    st = static_tables(scenario)
    T = workload.num_tasks
    H = int((sched.start + sched.duration).max())
    used = np.zeros((st.node_capacity.shape[0], H, st.type_min.shape[1]), dtype=np.int64)
    running = np.zeros((scenario.num_clusters, H), dtype=np.int64)
    for t in range(T):
        k, n, a = int(workload.task_type[t]), int(sched.node[t]), sched.alloc[t]
        assert workload.visible[t, st.node_cluster[n]], f"task {t} placed on a cluster that does not see it"
        assert st.node_cluster[n] == sched.cluster[t]
        assert sched.start[t] >= workload.arrival_slot[t], f"task {t} starts before it arrives"
        assert np.all(a >= st.type_min[k]) and np.all(a <= st.grid_max), f"task {t}: allocation {a} out of range"
        d = slot_table(scenario, float(workload.work[t]))[k, a[st.cpu], a[st.gpu]]
        assert d == sched.duration[t], f"task {t}: duration {sched.duration[t]}, the engine needs {d}"
        assert sched.jct[t] == sched.start[t] - workload.arrival_slot[t] + d
        used[n, sched.start[t]: sched.start[t] + d] += a
        running[sched.cluster[t], sched.start[t]: sched.start[t] + d] += 1
    assert np.all(used <= st.node_capacity[:, None, :]), "a node's capacity is exceeded"
    assert np.all(running <= st.max_running[:, None]), "a cluster runs more than max_running tasks"


class WindowOverflowError(RuntimeError):
    """A scheduled task is not in its cluster's pending window at its start slot."""


class SchedulePlayer:
    """An actor for `run_episode` that starts each task of `sched` in its planned slot, on its
    planned node with its planned allocation: one start per cluster per round, the rest of the
    slot's starts in the following rounds."""

    name = "optimal-schedule"

    def __init__(self, sched: OptimalSchedule):
        self.sched = sched
        self.todo = {int(s): [int(t) for t in np.flatnonzero(sched.start == s)] for s in np.unique(sched.start)}
        self.last_slot = int((sched.start + sched.duration).max())
        self.slot = -1
        self.pending: list[int] = []

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        slot = int(obs["slot"][0, 0])
        if slot != self.slot:  # the first round of a slot: its planned starts
            if slot > self.last_slot + 1:
                raise RuntimeError("replay did not finish within the schedule's horizon")
            self.slot, self.pending = slot, self.todo.pop(slot, [])
        N, R = obs["alloc_low"].shape[0], obs["alloc_low"].shape[2]
        out = RoundActions.nothing(N, R)
        for t in list(self.pending):
            c = int(self.sched.cluster[t])
            if out.task[c] >= 0:
                continue  # one start per agent per round; the rest in later rounds
            place = np.flatnonzero(obs["window_id"][c] == t)
            if not place.size:
                raise WindowOverflowError(f"task {t} is not in cluster {c}'s window at slot {slot}")
            out.task[c] = int(place[0])
            out.node[c] = int(np.flatnonzero(obs["node_id"][c] == self.sched.node[t])[0])
            out.alloc[c] = self.sched.alloc[t]
            self.pending.remove(t)
        return out


def replay_schedule(scenario: Scenario, workload: Workload, sched: OptimalSchedule) -> dict[str, np.ndarray]:
    """Play `sched` in the engine (strict mode) and return its task records.

    Raises WindowOverflowError if a task is not in its cluster's window when it should start:
    then the optimum is not reachable in the environment and is only a lower bound.
    """
    result = run_episode(scenario, SchedulePlayer(sched), seed=0, engine=Engine(scenario, strict=True),
                         workload=workload)
    return result.records
