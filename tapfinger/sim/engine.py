"""The simulator engine: numpy state of clusters, nodes, windows, queues and running tasks.

Semantics follow DESIGN.md "Reference semantics" exactly:

* a slot is a sequence of rounds; in each round every agent may start one task of its window
  (and, if the scenario allows preemption, re-allocate its running tasks); the slot ends after
  the first round in which no agent started a task;
* two agents that pick the same task in one round conflict; the lowest agent index wins (the
  learned policy resolves conflicts itself before acting, this is the rule for any residue);
* at the end of a slot, in this order: rewards (minus the tasks in each cluster), ageing,
  progress and finishing, deadline misses, the next slot's capacities (a node whose capacity
  shrinks below what its tasks hold preempts or shrinks them, `Scenario.on_shrink`), arrivals,
  queues refilling windows.

Beyond the reference mode (issue 14): an agent may decline a waiting task when the scenario
allows admission control (it leaves the system and counts as missed); a task on an edge node runs
at its type's `edge_speed`; a re-allocated or restarted task makes no progress for the scenario's
`restart_seconds` (`migration_seconds` when it restarts on the other kind of node). Every task
ends finished, declined or (truncated episodes) unfinished, exactly once; no node ever holds more
than its current capacity.

No torch object is built here; everything is a numpy array indexed by task id. Task arrays
have one extra row (index `T`) that serves as the "empty place" sentinel of windows and
running lists, so gathers need no masking.
"""

from __future__ import annotations

from collections import deque
import numpy as np

from tapfinger.sim.progress import finished, progress_step
from tapfinger.sim.scenario import Scenario
from tapfinger.sim.tables import static_tables
from tapfinger.sim.workload import Workload, make_workload

from tapfinger.sim.snapshots import Snapshots
from tapfinger.sim.tiers import DECLINED, FINISHED, RUNNING, WAITING, WAITING_NOT_ARRIVED, TierEvents

__all__ = ["DECLINED", "FINISHED", "RUNNING", "WAITING", "WAITING_NOT_ARRIVED", "Engine", "InvalidActionError"]


class InvalidActionError(ValueError):
    """An action that the masks forbid, raised in strict mode."""


class Engine(TierEvents, Snapshots):
    """One episode of a scenario. `reset(seed)`, then `play_round(...)` until `done`."""

    def __init__(self, scenario: Scenario, strict: bool = False):
        for t in scenario.task_types:
            if not any(m > 0 for m in t.minimum):
                raise ValueError(f"task type '{t.name}' has an all-zero minimum; give it a positive "
                                 f"minimum in at least one resource")
        self.scenario = scenario
        self.strict = strict
        self.static = static_tables(scenario)
        self.N = scenario.num_clusters
        self.W = scenario.window_size
        self.R = scenario.num_resources
        self.M = int(self.static.max_running.max())
        self.workload: Workload | None = None

    # ------------------------------------------------------------------ episode set-up
    def reset(self, seed: int, workload: Workload | None = None) -> None:
        wl = workload if workload is not None else make_workload(self.scenario, seed)
        if wl.visible.shape[1] != self.N:
            raise ValueError(f"workload has {wl.visible.shape[1]} clusters, scenario has {self.N}")
        self.workload = wl
        T = wl.num_tasks
        self.T = T
        self.empty = T  # sentinel row
        self.task_type = np.append(wl.task_type, 0)
        self.arrival = np.append(wl.arrival_slot, -1)
        self.work = np.append(wl.work, 1.0)  # the true work: progress runs on it
        self.work_estimate = np.append(wl.known_work, 1.0)  # what observations show
        self.deadline = np.append(wl.deadline, -1)
        self.visible = np.vstack([wl.visible, np.zeros((1, self.N), dtype=bool)])
        self.vis_count = self.visible.sum(axis=1)
        self.status = np.zeros(T + 1, dtype=np.int8)
        self.age = np.zeros(T + 1, dtype=np.int64)
        self.start = np.full(T + 1, -1, dtype=np.int64)
        self.finish = np.full(T + 1, -1, dtype=np.int64)
        self.cluster = np.full(T + 1, -1, dtype=np.int64)
        self.node = np.full(T + 1, -1, dtype=np.int64)
        self.alloc = np.zeros((T + 1, self.R), dtype=np.int64)
        self.prev_alloc = np.zeros((T + 1, self.R), dtype=np.int64)
        self.first_alloc = np.zeros((T + 1, self.R), dtype=np.int64)
        self.progress = np.zeros(T + 1)
        self.switches = np.zeros(T + 1, dtype=np.int64)
        self._reset_tiers(seed, T)
        self.node_free = self.node_capacity_now.copy()
        self.window = np.full((self.N, self.W), self.empty, dtype=np.int64)
        self.running = np.full((self.N, self.M), self.empty, dtype=np.int64)
        self.num_running = np.zeros(self.N, dtype=np.int64)
        self.num_waiting = np.zeros(self.N, dtype=np.int64)  # window + queue, per cluster
        self.queues: list[deque[int]] = [deque() for _ in range(self.N)]
        self.slot = 0
        self.round = 0
        self.next_arrival = 0  # index of the next task to arrive
        self.finished_count = 0
        self.declined_count = 0
        self.slot_declines = np.zeros(self.N)  # misses by decline this slot, per cluster that saw them
        self.slot_declined_tasks = 0
        self.last_misses = np.zeros(self.N)
        self.last_missed_tasks = 0  # distinct tasks that missed their deadline at the last slot end
        self.invalid_actions = np.zeros(self.N, dtype=np.int64)
        self.conflicts = np.zeros(self.N, dtype=np.int64)
        self.rounds_total = 0
        self.done = False
        self.truncated = False
        self.last_rewards = np.zeros(self.N)
        self._arrive()

    # ------------------------------------------------------------------ queries
    def tasks_in_cluster(self) -> np.ndarray:
        """Per cluster: running + window + queue (a task visible to several counts in each)."""
        return self.num_running + self.num_waiting

    def queue_lengths(self) -> np.ndarray:
        return self.num_waiting - (self.window != self.empty).sum(axis=1)

    def cluster_free(self) -> np.ndarray:
        free = np.zeros((self.N, self.R), dtype=np.int64)
        np.add.at(free, self.static.node_cluster, self.node_free)
        return free

    # ------------------------------------------------------------------ feasibility
    def start_problem(self, agent: int, pos: int, node_local: int, alloc: np.ndarray) -> str | None:
        """Why starting window place `pos` on `node_local` with `alloc` is infeasible, or None."""
        if not 0 <= pos < self.W:
            return f"window place {pos} is outside 0..{self.W - 1}"
        t = self.window[agent, pos]
        if t == self.empty:
            return f"window place {pos} is empty"
        if self.num_running[agent] >= self.static.max_running[agent]:
            return f"cluster already runs its maximum of {self.static.max_running[agent]} tasks"
        if not 0 <= node_local < self.static.nodes_per_cluster[agent]:
            return f"node {node_local} is outside 0..{self.static.nodes_per_cluster[agent] - 1}"
        tmin = self.static.type_min[self.task_type[t]]
        if np.any(alloc < tmin):
            return f"allocation {alloc.tolist()} is below the task type's minimum {tmin.tolist()}"
        if np.any(alloc > self.static.grid_max):
            return f"allocation {alloc.tolist()} exceeds the grid maximum {self.static.grid_max.tolist()}"
        gnode = self.static.cluster_nodes[agent, node_local]
        if np.any(alloc > self.node_free[gnode]):
            return f"allocation {alloc.tolist()} exceeds node {node_local}'s free {self.node_free[gnode].tolist()}"
        return None

    def realloc_problem(self, agent: int, realloc: np.ndarray) -> str | None:
        """Why re-allocating the agent's running tasks as `realloc` ([M, R], -1 = keep) fails."""
        if not self.scenario.allow_preemption:
            return "the scenario does not allow preemption (allow_preemption = false)"
        ids = self.running[agent]
        change = (realloc >= 0).any(axis=1) & (ids != self.empty)
        if np.any((realloc >= 0).any(axis=1) & (ids == self.empty)):
            return "re-allocation given for an empty running place"
        if np.any(change & (realloc < 0).any(axis=1)):
            return "a re-allocation must give every resource (or -1 in all to keep)"
        new = np.where(change[:, None], realloc, self.alloc[ids])
        tmin = self.static.type_min[self.task_type[ids]]
        paused = (new == 0).all(axis=1)
        if np.any(change & ~paused & (new < tmin).any(axis=1)):
            return "a re-allocation below the task type's minimum (pause at all-zero instead)"
        if np.any(new > self.static.grid_max):
            return "a re-allocation exceeds the grid maximum"
        used = np.zeros_like(self.node_free)
        live = ids != self.empty
        np.add.at(used, self.node[ids[live]], new[live])
        own = self.static.cluster_nodes[agent, : self.static.nodes_per_cluster[agent]]
        if np.any(used[own] > self.node_capacity_now[own]):
            return "re-allocations exceed a node's current capacity"
        return None

    # ------------------------------------------------------------------ one round
    def play_round(self, task: np.ndarray, node: np.ndarray, alloc: np.ndarray,
                   realloc: np.ndarray | None = None, decline: np.ndarray | None = None) -> bool:
        """Apply one round. task[i] = window place or -1; node[i] local node; alloc[i] [R];
        realloc[i] [M, R] with -1 = keep (or None); decline[i] = window place to decline or -1 (or
        None). Each agent in index order: its re-allocation, its start, its decline. Returns True
        if the slot ended (a round in which no agent started or declined a task)."""
        if self.done:
            raise RuntimeError("episode is over; call reset()")
        self.round += 1
        self.rounds_total += 1
        started_any = False
        claimed: set[int] = set()
        window_at_round_start = self.window.copy()  # a winner empties the losers' places
        for i in range(self.N):
            if realloc is not None and np.any(realloc[i] >= 0):
                problem = self.realloc_problem(i, realloc[i])
                if problem is None:
                    self._apply_realloc(i, realloc[i])
                else:
                    self._reject(i, problem)
            pos = int(task[i])
            if pos >= 0:
                t = int(window_at_round_start[i, pos]) if pos < self.W else self.empty
                if t != self.empty and t in claimed:
                    self.conflicts[i] += 1  # lost to a lower agent index this round
                else:
                    problem = self.start_problem(i, pos, int(node[i]), alloc[i])
                    if problem is not None:
                        self._reject(i, problem)
                    else:
                        self._start(i, t, int(node[i]), alloc[i])
                        claimed.add(t)
                        started_any = True
            dpos = -1 if decline is None else int(decline[i])
            if dpos >= 0:
                t = int(window_at_round_start[i, dpos]) if dpos < self.W else self.empty
                if dpos == pos:
                    self._reject(i, f"window place {dpos} is both started and declined")
                    continue
                if t != self.empty and t in claimed:
                    self.conflicts[i] += 1
                    continue
                problem = self.decline_problem(i, dpos)
                if problem is not None:
                    self._reject(i, problem)
                    continue
                self._decline(i, int(self.window[i, dpos]))
                claimed.add(t)
                started_any = True
        if not started_any:
            self._end_slot()
            return True
        return False

    def _leave_windows(self, t: int) -> None:
        for c in np.flatnonzero(self.visible[t]):
            self.num_waiting[c] -= 1
            hit = np.flatnonzero(self.window[c] == t)
            if hit.size:
                self.window[c, hit[0]] = self.empty  # the place stays empty until the slot ends
            # queue entries are dropped lazily when the queue refills the window

    def _reject(self, agent: int, problem: str) -> None:
        if self.strict:
            raise InvalidActionError(f"agent {agent}: {problem}")
        self.invalid_actions[agent] += 1

    def _apply_realloc(self, agent: int, realloc: np.ndarray) -> None:
        for k in np.flatnonzero((realloc >= 0).any(axis=1)):
            t = self.running[agent, k]
            n = self.node[t]
            self.node_free[n] += self.alloc[t]
            self.alloc[t] = realloc[k]
            self.node_free[n] -= realloc[k]

    def _start(self, agent: int, t: int, node_local: int, alloc: np.ndarray) -> None:
        gnode = self.static.cluster_nodes[agent, node_local]
        kind = int(self.static.node_kind[gnode])
        if self.preemptions[t]:  # a restart: ElasticFlow's restart cost, or a migration's
            moved = self.last_kind[t] != kind
            self.overhead[t] = self.scenario.migration_seconds if moved else self.scenario.restart_seconds
            if self.hit_at[t] >= 0:  # back after a failure or departure: how long it took, what it costs
                self.recovery_slots[t] += self.slot - self.hit_at[t]
                self.hit_at[t] = -1
                self.overhead[t] += self.scenario.faults.restart_seconds
        else:
            self.start[t] = self.slot
            self.first_alloc[t] = alloc
        self.last_kind[t] = kind
        self.status[t] = RUNNING
        self.cluster[t] = agent
        self.node[t] = gnode
        self.alloc[t] = alloc
        self.prev_alloc[t] = alloc  # a fresh start is not a switch
        self.node_free[gnode] -= alloc
        self._leave_windows(t)
        place = int(np.flatnonzero(self.running[agent] == self.empty)[0])
        self.running[agent, place] = t
        self.num_running[agent] += 1

    # ------------------------------------------------------------------ end of slot
    def _end_slot(self) -> None:
        self.last_rewards = -self.tasks_in_cluster().astype(np.float64)
        in_system = (self.status == WAITING) | (self.status == RUNNING)
        self.age[in_system] += 1
        run_ids = self.running[self.running != self.empty]
        if run_ids.size:
            self._progress(run_ids)
        self._count_misses()
        self.slot += 1
        self.round = 0
        self._slot_events()
        self._arrive()
        if self.next_arrival >= self.T and self.finished_count + self.declined_count == self.T:
            self.done = True
        elif self.slot >= self.scenario.max_slots:
            self.done = True
            self.truncated = True

    def _progress(self, ids: np.ndarray) -> None:
        st = self.static
        ttype = self.task_type[ids]
        alloc = self.alloc[ids]
        c = np.minimum(alloc[:, st.cpu], st.grid_max[st.cpu])
        g = np.minimum(alloc[:, st.gpu], st.grid_max[st.gpu])
        p = self.progress[ids]
        dp = progress_step(st.weight[ttype, c, g], st.base[ttype, c, g], p, self.work[ids])
        below = (alloc < st.type_min[ttype]).any(axis=1)
        dp[below] = 0.0  # below minimum: no progress
        # Only a task present at the previous slot end can have switched: one started in this
        # slot and re-allocated in a later round of it has no previous allocation to differ from.
        switched = (alloc != self.prev_alloc[ids]).any(axis=1) & (self.start[ids] < self.slot)
        dp[switched] *= self.scenario.switch_weight
        self.switches[ids[switched]] += 1
        if self.scenario.restart_seconds or self.scenario.migration_seconds or self.scenario.faults.restart_seconds:
            # an elastic resize restarts the job (ElasticFlow): no progress until the restart is paid
            over = self.overhead[ids]
            over[switched] = np.maximum(over[switched], self.scenario.restart_seconds)
            slot_s = self.scenario.slot_seconds
            dp *= np.clip(1.0 - over / slot_s, 0.0, 1.0)
            self.overhead[ids] = np.where(below, over, np.maximum(over - slot_s, 0.0))
        dp *= st.node_speed[ttype, self.node[ids]]
        if self.fault_timeline is not None:
            dp = self._fault_progress(ids, dp, below)
        self.progress[ids] = p + dp
        self.prev_alloc[ids] = alloc
        done = ids[finished(self.progress[ids])]
        for t in done:
            self._finish(int(t))

    def _enqueue(self, t: int) -> None:
        for c in np.flatnonzero(self.visible[t]):
            self.num_waiting[c] += 1
            free = np.flatnonzero(self.window[c] == self.empty)
            if free.size:
                self.window[c, free[0]] = t
            else:
                self.queues[c].append(t)

    def _finish(self, t: int) -> None:
        self.status[t] = FINISHED
        self.finish[t] = self.slot  # the slot whose end completed it
        n = self.node[t]
        self.node_free[n] += self.alloc[t]
        a = self.cluster[t]
        self.running[a, self.running[a] == t] = self.empty
        self.num_running[a] -= 1
        self.finished_count += 1

    def _arrive(self) -> None:
        wl = self.workload
        while self.next_arrival < self.T and wl.arrival_slot[self.next_arrival] <= self.slot:
            t = self.next_arrival
            self.next_arrival += 1
            self.status[t] = WAITING
            self._enqueue(t)
        for c in range(self.N):
            q = self.queues[c]
            if not q:
                continue
            free = np.flatnonzero(self.window[c] == self.empty)
            k = 0
            while q and k < free.size:
                t = q.popleft()
                if self.status[t] == WAITING:  # started elsewhere: dropped lazily here
                    self.window[c, free[k]] = t
                    k += 1
