"""The engine's events beyond the reference semantics: admission control (declining a waiting
task), deadline misses, node capacities that change between slots (tidal edge capacity; issue 14)
with the preemption or shrinking of the tasks a smaller node can no longer hold, and faults (issue
15): failures that lose the progress since a task's last checkpoint, slowdowns, departures.

At a slot end, after progress: deadline misses are counted; then the slot's fault events apply in
time order (a failed node's tasks fall back to their last checkpoint); then every node gets its
capacity for the next slot, the schedule's share if the node is up and nothing otherwise, and a
node left holding more than it has preempts (a preempted task keeps its progress: it is saved on
the way out, a failure's loss is already taken).

A mixin of `tapfinger.sim.engine.Engine` (it works on the engine's arrays; see the engine's
docstring for the order of a slot end), kept apart so that each module has one job.
"""

from __future__ import annotations

import numpy as np

from tapfinger.sim.capacity import node_capacity_at
from tapfinger.sim.faults import FaultTimeline, NodeState, apply_event

WAITING_NOT_ARRIVED, WAITING, RUNNING, FINISHED, DECLINED = 0, 1, 2, 3, 4


class TierEvents:
    """Declines, deadline misses, capacity changes and faults of an `Engine` episode."""

    def _reset_tiers(self, seed: int, T: int) -> None:
        self.overhead = np.zeros(T + 1)  # seconds of restart still to pay before progress resumes
        self.preemptions = np.zeros(T + 1, dtype=np.int64)
        self.last_kind = np.full(T + 1, -1, dtype=np.int64)  # kind of the node it last ran on
        self.declined_at = np.full(T + 1, -1, dtype=np.int64)
        self.miss_counted = np.zeros(T + 1, dtype=bool)
        self.checkpoint = np.zeros(T + 1)  # progress saved by the task's last checkpoint
        self.since_checkpoint = np.zeros(T + 1)  # seconds run since then
        self.lost_work = np.zeros(T + 1)  # progress lost to failures (in units of the task's whole work)
        self.failures = np.zeros(T + 1, dtype=np.int64)  # times a failure hit the task
        self.hit_at = np.full(T + 1, -1, dtype=np.int64)  # slot of the failure it waits to recover from
        self.recovery_slots = np.zeros(T + 1, dtype=np.int64)  # slots from failures to the restarts
        nodes = self.static.node_capacity.shape[0]
        self.node_state = NodeState.healthy(nodes)
        self.fault_timeline = (FaultTimeline(self.scenario, seed, nodes, self.static.node_cluster)
                               if self.scenario.faults.active else None)
        self.fault_log: list[tuple[int, int, str]] = []  # (slot whose end it came at, node, event)
        self.node_capacity_now = node_capacity_at(self.scenario, 0)

    def decline_problem(self, agent: int, pos: int) -> str | None:
        """Why agent `agent` may not decline window place `pos`, or None."""
        if not self.scenario.allow_decline:
            return "the scenario does not allow declining tasks (allow_decline = false)"
        if not 0 <= pos < self.W:
            return f"window place {pos} is outside 0..{self.W - 1}"
        if self.window[agent, pos] == self.empty:
            return f"window place {pos} is empty"
        return None

    def _decline(self, agent: int, t: int) -> None:
        self.status[t] = DECLINED
        self.declined_at[t] = self.slot
        self.cluster[t] = agent  # who declined it
        self.declined_count += 1
        self.slot_declines[self.visible[t]] += 1
        self.slot_declined_tasks += 1
        self._leave_windows(t)

    def _count_misses(self) -> None:
        """`last_misses`: per cluster, the tasks it sees that became missed at this slot end (the
        deadline passed unfinished, or declined during the slot): what a deadline penalty charges."""
        misses = self.slot_declines
        self.last_missed_tasks = self.slot_declined_tasks
        live = (self.status == WAITING) | (self.status == RUNNING)
        late = np.flatnonzero(live & ~self.miss_counted & (self.deadline >= 0) & (self.deadline <= self.slot + 1))
        if late.size:
            self.miss_counted[late] = True
            misses = misses + self.visible[late].sum(axis=0)
            self.last_missed_tasks += int(late.size)
        self.last_misses = misses.astype(np.float64)
        self.slot_declines = np.zeros(self.N)
        self.slot_declined_tasks = 0

    def _slot_events(self) -> None:
        """After `self.slot` has moved on: the faults of the slot that ended, then the new capacities."""
        if self.fault_timeline is not None:
            ended = self.slot - 1
            for _, node, event, value in self.fault_timeline.events_until(self.slot * self.scenario.slot_seconds):
                if event == "fail" and not self.node_state.failed[node]:
                    self._lose_since_checkpoint(node, ended)
                elif event == "leave" and self.node_state.up[node]:
                    self.hit_at[self._tasks_on(node)] = ended  # announced: nothing lost, a restart to pay
                apply_event(self.node_state, node, event, value)
                self.fault_log.append((ended, int(node), event))
        if self.scenario.capacity_varies or self.fault_timeline is not None:
            cap = node_capacity_at(self.scenario, self.slot)
            self._change_capacity(np.where(self.node_state.up[:, None], cap, 0))

    def _tasks_on(self, node: int) -> np.ndarray:
        ids = self.running[self.running != self.empty]
        return ids[self.node[ids] == node]

    def _lose_since_checkpoint(self, node: int, slot: int) -> None:
        hit = self._tasks_on(node)
        self.lost_work[hit] += self.progress[hit] - self.checkpoint[hit]
        self.progress[hit] = self.checkpoint[hit]
        self.failures[hit] += 1
        self.hit_at[hit] = slot

    def _fault_progress(self, ids: np.ndarray, dp: np.ndarray, below: np.ndarray) -> np.ndarray:
        """Slowdowns, and the checkpoints: in the slot whose end completes checkpoint_seconds of
        running since the last one, the task saves its progress at that slot's end, and the save
        takes checkpoint_cost_seconds of the slot (that much less progress in it). A task that
        finishes before its first checkpoint pays nothing."""
        f = self.scenario.faults
        dp = dp * self.node_state.speed[self.node[ids]]
        if f.checkpoint_seconds > 0:
            slot_s = self.scenario.slot_seconds
            since = self.since_checkpoint[ids] + np.where(below, 0.0, slot_s)
            saves = since >= f.checkpoint_seconds
            dp = np.where(saves, dp * max(0.0, 1.0 - f.checkpoint_cost_seconds / slot_s), dp)
            self.checkpoint[ids[saves]] = np.minimum(self.progress[ids[saves]] + dp[saves], 1.0)
            self.since_checkpoint[ids] = np.where(saves, since % f.checkpoint_seconds, since)
        return dp

    def _change_capacity(self, new_cap: np.ndarray) -> None:
        """The nodes' capacities for the new slot; a node left holding more than it has preempts
        (or, with on_shrink = "shrink", first shrinks towards their minimums) its latest-started tasks.
        A node left with nothing at all (failed, away, or a schedule at zero) preempts every task on it,
        paused ones too: no task stays on a node that is not there."""
        used = self.node_capacity_now - self.node_free
        self.node_capacity_now = new_cap
        gone = (new_cap == 0).all(axis=1)
        for n in np.flatnonzero((used > new_cap).any(axis=1) | gone):
            on_node = [int(t) for t in self.running[self.static.node_cluster[n]] if t != self.empty and self.node[t] == n]
            on_node.sort(key=lambda t: (self.start[t], t))  # the latest (first) start is preempted first
            over = used[n] - new_cap[n]
            if self.scenario.on_shrink == "shrink" and not gone[n]:
                over = self._shrink(on_node, over)
            while ((over > 0).any() or gone[n]) and on_node:
                t = on_node.pop()
                over -= self.alloc[t]
                self._preempt(t)
        self.node_free = self._free_from_running()

    def _free_from_running(self) -> np.ndarray:
        used = np.zeros_like(self.node_capacity_now)
        ids = self.running[self.running != self.empty]
        np.add.at(used, self.node[ids], self.alloc[ids])
        return self.node_capacity_now - used

    def _shrink(self, on_node: list[int], over: np.ndarray) -> np.ndarray:
        """Lower the allocations of elastic tasks towards their minimums, the largest share above
        its minimum first, until the node fits or every task is at its minimum; what is still over."""
        over = over.copy()
        for r in np.flatnonzero(over > 0):
            while over[r] > 0:
                spare = [(self.alloc[t, r] - self.static.type_min[self.task_type[t], r], t) for t in on_node]
                most, t = max(spare, default=(0, -1))
                if most <= 0:
                    break
                cut = min(int(most), int(over[r]))
                self.alloc[t, r] -= cut
                over[r] -= cut
        return over

    def _preempt(self, t: int) -> None:
        """Back to waiting with its progress, in the windows (or queues) of the clusters that see it."""
        a = self.cluster[t]
        self.running[a, self.running[a] == t] = self.empty
        self.num_running[a] -= 1
        self.status[t] = WAITING
        self.preemptions[t] += 1
        self.alloc[t] = 0
        self.checkpoint[t] = self.progress[t]  # saved on the way out (a failure's loss is taken before)
        self.since_checkpoint[t] = 0.0
        # A queue may still hold the entry of its first wait (started entries are dropped lazily, by
        # status, and it is waiting again): drop it, or the task would be in a window twice.
        for c in np.flatnonzero(self.visible[t]):
            if t in self.queues[c]:
                self.queues[c] = type(self.queues[c])(x for x in self.queues[c] if x != t)
        self._enqueue(t)

