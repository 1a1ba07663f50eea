"""What an `Engine` episode can give of itself: a fork of its present with another future (the
planners' simulator), and one record per task (the episode's results).

A mixin of `tapfinger.sim.engine.Engine`, kept apart so that the engine module holds the slot
semantics alone.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from tapfinger.sim.tiers import DECLINED, FINISHED
from tapfinger.sim.workload import Workload, no_tasks


class Snapshots:
    """`fork` and `task_records` of an `Engine`."""

    # ------------------------------------------------------------------ forks
    # Per-task arrays, each with the sentinel row last: what `fork` carries over for arrived tasks.
    _TASK_ARRAYS = ("task_type", "arrival", "work", "work_estimate", "deadline", "visible", "vis_count", "status", "age", "start",
                    "finish", "cluster", "node", "alloc", "prev_alloc", "first_alloc", "progress", "switches",
                    "overhead", "preemptions", "last_kind", "declined_at", "miss_counted", "checkpoint",
                    "since_checkpoint", "lost_work", "failures", "hit_at", "recovery_slots")

    def fork(self, future: Workload | None = None, work: np.ndarray | None = None):
        """A copy of this episode's present with another future: the tasks that have arrived (in every
        state, with their progress, places and the free resources), followed by `future`'s tasks (their
        arrival slots must lie after the current slot), or by none. `work` replaces the arrived tasks'
        work (a planner's belief: the estimates, not the truth). The copy shares nothing mutable with
        this engine, so a planner may play it forward freely; its metrics count the arrived tasks too."""
        A = self.next_arrival
        fut = future if future is not None else no_tasks(self.N)
        if fut.num_tasks and int(fut.arrival_slot.min()) <= self.slot:
            raise ValueError(f"a fork's future tasks must arrive after slot {self.slot}")
        eng = type(self).__new__(type(self))
        eng.__dict__.update({k: v for k, v in self.__dict__.items() if not isinstance(v, np.ndarray)})
        eng.T = T = A + fut.num_tasks
        eng.empty = T
        head = np.r_[np.arange(A), self.empty]  # the arrived tasks, then the sentinel row
        for name in self._TASK_ARRAYS:
            old = getattr(self, name)[head]
            extra = np.zeros((fut.num_tasks, *old.shape[1:]), dtype=old.dtype)
            setattr(eng, name, np.concatenate([old[:A], extra, old[A:]]))
        eng.task_type[A:T], eng.arrival[A:T] = fut.task_type, fut.arrival_slot
        eng.work[A:T], eng.work_estimate[A:T] = fut.work, fut.known_work
        eng.deadline[A:T], eng.visible[A:T] = fut.deadline, fut.visible
        eng.vis_count = eng.visible.sum(axis=1)
        eng.start[A:T] = eng.finish[A:T] = eng.cluster[A:T] = eng.node[A:T] = -1
        if work is not None:
            eng.work[:A] = work[:A]
        eng.workload = Workload(arrival_slot=eng.arrival[:T].copy(), task_type=eng.task_type[:T].copy(),
                                visible=eng.visible[:T].copy(), work=eng.work[:T].copy(),
                                deadline=eng.deadline[:T].copy(), work_estimate=eng.work_estimate[:T].copy())
        eng.window = np.where(self.window == self.empty, T, self.window)
        eng.running = np.where(self.running == self.empty, T, self.running)
        eng.queues = [deque(q) for q in self.queues]
        for name in ("node_free", "num_running", "num_waiting", "invalid_actions", "conflicts", "last_rewards",
                     "node_capacity_now", "slot_declines", "last_misses"):
            setattr(eng, name, getattr(self, name).copy())
        # A planner's fork knows the nodes' state now, not their future: no fault comes in it.
        eng.node_state = self.node_state.copy()
        eng.fault_timeline = None
        eng.fault_log = list(self.fault_log)
        eng.done = eng.next_arrival >= T and eng.finished_count + eng.declined_count == T
        return eng

    # ------------------------------------------------------------------ records
    def task_records(self) -> dict[str, np.ndarray]:
        """One row per task: arrival, start, finish, cluster, node, allocation, JCT."""
        T = self.T
        jct = np.where(self.status[:T] == FINISHED, self.age[:T], -1)
        finish, deadline = self.finish[:T], self.deadline[:T]
        done = self.status[:T] == FINISHED
        met = done & (deadline >= 0) & (finish < deadline)
        late = done & (deadline >= 0) & ~met
        return {
            "task": np.arange(T),
            "type": self.task_type[:T].copy(),
            "arrival": self.arrival[:T].copy(),
            "start": self.start[:T].copy(),
            "finish": self.finish[:T].copy(),
            "cluster": self.cluster[:T].copy(),
            "node": self.node[:T].copy(),
            "alloc": self.first_alloc[:T].copy(),
            "jct": jct,
            "switches": self.switches[:T].copy(),
            "deadline": self.deadline[:T].copy(),
            "declined": self.status[:T] == DECLINED,
            "met": met,
            "lateness": np.where(late, finish + 1 - deadline, -1),
            "preemptions": self.preemptions[:T].copy(),
            "failures": self.failures[:T].copy(),
            "lost_work": self.lost_work[:T].copy(),
            "recovery_slots": self.recovery_slots[:T].copy(),
        }

