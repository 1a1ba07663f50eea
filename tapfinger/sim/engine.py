"""The simulator engine: numpy state of clusters, nodes, windows, queues and running tasks.

Semantics follow DESIGN.md "Reference semantics" exactly:

* a slot is a sequence of rounds; in each round every agent may start one task of its window
  (and, if the scenario allows preemption, re-allocate its running tasks); the slot ends after
  the first round in which no agent started a task;
* two agents that pick the same task in one round conflict; the lowest agent index wins (the
  learned policy resolves conflicts itself before acting, this is the rule for any residue);
* at the end of a slot, in this order: rewards (minus the tasks in each cluster), ageing,
  progress and finishing, arrivals, queues refilling windows.

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
from tapfinger.sim.workload import Workload, make_workload, no_tasks

WAITING_NOT_ARRIVED, WAITING, RUNNING, FINISHED = 0, 1, 2, 3


class InvalidActionError(ValueError):
    """An action that the masks forbid, raised in strict mode."""


class Engine:
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
        self.node_free = self.static.node_capacity.copy()
        self.window = np.full((self.N, self.W), self.empty, dtype=np.int64)
        self.running = np.full((self.N, self.M), self.empty, dtype=np.int64)
        self.num_running = np.zeros(self.N, dtype=np.int64)
        self.num_waiting = np.zeros(self.N, dtype=np.int64)  # window + queue, per cluster
        self.queues: list[deque[int]] = [deque() for _ in range(self.N)]
        self.slot = 0
        self.round = 0
        self.next_arrival = 0  # index of the next task to arrive
        self.finished_count = 0
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
        if np.any(used[own] > self.static.node_capacity[own]):
            return "re-allocations exceed a node's capacity"
        return None

    # ------------------------------------------------------------------ one round
    def play_round(self, task: np.ndarray, node: np.ndarray, alloc: np.ndarray,
                   realloc: np.ndarray | None = None) -> bool:
        """Apply one round. task[i] = window place or -1; node[i] local node; alloc[i] [R];
        realloc[i] [M, R] with -1 = keep (or None). Returns True if the slot ended."""
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
            if pos < 0:
                continue
            t = int(window_at_round_start[i, pos]) if 0 <= pos < self.W else self.empty
            if t != self.empty and t in claimed:
                self.conflicts[i] += 1  # lost to a lower agent index this round
                continue
            problem = self.start_problem(i, pos, int(node[i]), alloc[i])
            if problem is not None:
                self._reject(i, problem)
                continue
            self._start(i, t, int(node[i]), alloc[i])
            claimed.add(t)
            started_any = True
        if not started_any:
            self._end_slot()
            return True
        return False

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
        self.status[t] = RUNNING
        self.start[t] = self.slot
        self.cluster[t] = agent
        self.node[t] = gnode
        self.alloc[t] = alloc
        self.prev_alloc[t] = alloc  # a fresh start is not a switch
        self.first_alloc[t] = alloc
        self.node_free[gnode] -= alloc
        for c in np.flatnonzero(self.visible[t]):
            self.num_waiting[c] -= 1
            hit = np.flatnonzero(self.window[c] == t)
            if hit.size:
                self.window[c, hit[0]] = self.empty  # the place stays empty until the slot ends
            # queue entries are dropped lazily when the queue refills the window
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
        self.slot += 1
        self.round = 0
        self._arrive()
        if self.next_arrival >= self.T and self.finished_count == self.T:
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
        dp[(alloc < st.type_min[ttype]).any(axis=1)] = 0.0  # below minimum: no progress
        # Only a task present at the previous slot end can have switched: one started in this
        # slot and re-allocated in a later round of it has no previous allocation to differ from.
        switched = (alloc != self.prev_alloc[ids]).any(axis=1) & (self.start[ids] < self.slot)
        dp[switched] *= self.scenario.switch_weight
        self.switches[ids[switched]] += 1
        self.progress[ids] = p + dp
        self.prev_alloc[ids] = alloc
        done = ids[finished(self.progress[ids])]
        for t in done:
            self._finish(int(t))

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
            for c in np.flatnonzero(self.visible[t]):
                self.num_waiting[c] += 1
                free = np.flatnonzero(self.window[c] == self.empty)
                if free.size:
                    self.window[c, free[0]] = t
                else:
                    self.queues[c].append(t)
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

    # ------------------------------------------------------------------ forks
    # Per-task arrays, each with the sentinel row last: what `fork` carries over for arrived tasks.
    _TASK_ARRAYS = ("task_type", "arrival", "work", "work_estimate", "deadline", "visible", "vis_count", "status", "age", "start",
                    "finish", "cluster", "node", "alloc", "prev_alloc", "first_alloc", "progress", "switches")

    def fork(self, future: Workload | None = None, work: np.ndarray | None = None) -> "Engine":
        """A copy of this episode's present with another future: the tasks that have arrived (in every
        state, with their progress, places and the free resources), followed by `future`'s tasks (their
        arrival slots must lie after the current slot), or by none. `work` replaces the arrived tasks'
        work (a planner's belief: the estimates, not the truth). The copy shares nothing mutable with
        this engine, so a planner may play it forward freely; its metrics count the arrived tasks too."""
        A = self.next_arrival
        fut = future if future is not None else no_tasks(self.N)
        if fut.num_tasks and int(fut.arrival_slot.min()) <= self.slot:
            raise ValueError(f"a fork's future tasks must arrive after slot {self.slot}")
        eng = Engine.__new__(Engine)
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
        for name in ("node_free", "num_running", "num_waiting", "invalid_actions", "conflicts", "last_rewards"):
            setattr(eng, name, getattr(self, name).copy())
        eng.done = eng.next_arrival >= T and eng.finished_count == T
        return eng

    # ------------------------------------------------------------------ records
    def task_records(self) -> dict[str, np.ndarray]:
        """One row per task: arrival, start, finish, cluster, node, allocation, JCT."""
        T = self.T
        jct = np.where(self.status[:T] == FINISHED, self.age[:T], -1)
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
        }

