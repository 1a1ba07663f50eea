"""The engine's events beyond the reference semantics (issue 14): admission control (declining
a waiting task), deadline misses, and node capacities that change between slots (tidal edge
capacity), with the preemption or shrinking of the tasks a smaller node can no longer hold.

A mixin of `tapfinger.sim.engine.Engine` (it works on the engine's arrays; see the engine's
docstring for the order of a slot end), kept apart so that each module has one job.
"""

from __future__ import annotations

import numpy as np

WAITING_NOT_ARRIVED, WAITING, RUNNING, FINISHED, DECLINED = 0, 1, 2, 3, 4


class TierEvents:
    """Declines, deadline misses and capacity changes of an `Engine` episode."""

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

    def _change_capacity(self, new_cap: np.ndarray) -> None:
        """The nodes' capacities for the new slot; a node left holding more than it has preempts
        (or, with on_shrink = "shrink", first shrinks towards their minimums) its latest-started tasks."""
        used = self.node_capacity_now - self.node_free
        self.node_capacity_now = new_cap
        for n in np.flatnonzero((used > new_cap).any(axis=1)):
            on_node = [int(t) for t in self.running[self.static.node_cluster[n]] if t != self.empty and self.node[t] == n]
            on_node.sort(key=lambda t: (self.start[t], t))  # the latest (first) start is preempted first
            over = used[n] - new_cap[n]
            if self.scenario.on_shrink == "shrink":
                over = self._shrink(on_node, over)
            while (over > 0).any() and on_node:
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
        self._enqueue(t)

