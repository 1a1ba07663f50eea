"""Deadline-aware baselines: `edf`, `elasticflow`, `elasticflow-edge` and `edgeflow`
(docs/deadline-baselines.md has the rules with their sources and what is simplified).

Each is a central planner: every round it reads all agents' observation rows (`deadline_view.Board`)
and returns the actions of every agent, each agent starting tasks on its own cluster's nodes. It
uses the observations and static scenario facts only (progress tables, node speeds, minimums,
restart costs), never the episode's future.

* `edf`: earliest deadline first. Waiting tasks with a deadline by deadline, then best-effort tasks
  by arrival (ties: lower id); each task at its type's requested allocation (`TaskType.requested()`),
  capped per resource by what is free on the node (never below the minimum), on the node where most
  of its GPU request fits (ties: more of the whole request, lower agent, lower node). One start per
  agent per round, so the tasks go in that order to the agents that see them; a task that fits
  nowhere now is passed over (the next one may use what is free). Non-preemptive; never declines.
  Only cloud clusters when the scenario has one (else all clusters).
* `elasticflow` (ElasticFlow, ASPLOS'23): admission control plus minimum satisfactory shares plus
  marginal gain, on the cloud only (as for edf). When a task with a deadline is first seen it is
  admitted iff the reservation (`deadline_plan.reserve`) of the admitted tasks with it still gives
  it and every admitted task that could meet its deadline without it a way to meet theirs; otherwise
  it is declined (when the scenario allows it) or kept as best-effort. The allocation
  (`deadline_place.allocate`) then gives admitted tasks their share now, best-effort ones their
  minimum, and spare GPUs by marginal gain, resizing running tasks (realloc) when the scenario allows
  preemption. It is replanned only when the set of tasks in the system or a node's capacity
  changes (arrivals, completions, declines, capacity curves), never between: each resize costs
  `restart_seconds`.
* `elasticflow-edge`: the same with the edge nodes' GPUs as extra capacity, one GPU per job at the
  type's edge speed, used as overflow: a job goes to the edge only when the cloud cannot give it a
  satisfactory share (admission counts the edge too); best-effort jobs go to the cloud, then the edge.
* `edgeflow` (EdgeFlow's idea, Gu, Jin, Liu 2025): the edge first. Each admitted job (in deadline
  order) is offloaded to an edge unit when its deadline still holds there at one GPU times its edge
  speed, so cloud GPUs stay for the jobs that need them; the others get cloud shares. Admission
  counts the edge; best-effort jobs fill idle edge GPUs first, then the cloud.
"""

from __future__ import annotations

import numpy as np

from agents.base import Policy
from agents.heuristics.deadline_place import allocate
from agents.heuristics.deadline_plan import Pools, reserve
from agents.heuristics.deadline_view import Board, Memory, Rates
from envs.actions import RoundActions
from tapfinger.sim.scenario import Scenario
from tapfinger.sim.tables import static_tables


def target_clusters(static) -> np.ndarray:
    """[N] bool: the clusters a cloud-only policy uses (the cloud ones, or all without any)."""
    kind = np.asarray(static.cluster_kind)
    return kind == 1 if (kind == 1).any() else np.ones(kind.size, dtype=bool)


class EdfPolicy(Policy):
    """Earliest deadline first at requested allocations (module docstring)."""

    name = "edf"
    preemptive = False

    def __init__(self, scenario: Scenario, seed: int = 0):
        super().__init__(scenario, seed)
        self.static = static_tables(scenario)
        self.request = np.array([t.requested() for t in scenario.task_types], dtype=np.int64)
        self.targets = target_clusters(self.static)
        self.memory = Memory()

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self.memory.clear()

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        N, R = obs["alloc_low"].shape[0], obs["alloc_low"].shape[2]
        out = RoundActions.nothing(N, R)
        board = Board(obs, self.static, self.memory)
        gpu = self.static.gpu
        order = sorted(board.waiting(), key=lambda j: (j.deadline < 0, max(j.deadline, 0), j.id))
        used: set[int] = set()
        for job in order:
            best = None
            for i, p in job.places:
                if i in used or not self.targets[i] or not obs["task_mask"][i, p + 1]:
                    continue
                for n in np.flatnonzero(obs["node_mask"][i, p]):
                    a = np.maximum(np.minimum(self.request[job.type], obs["alloc_high"][i, n]), obs["alloc_low"][i, p])
                    key = (-int(a[gpu]), -int(a.sum()), i, int(n))
                    if best is None or key < best[0]:
                        best = (key, i, p, int(n), a)
            if best is not None:
                _, i, p, n, a = best
                out.task[i], out.node[i], out.alloc[i] = p, n, a
                used.add(i)
        return out


class ElasticFlowPolicy(Policy):
    """ElasticFlow's admission control, minimum satisfactory shares and marginal gain (module
    docstring); `edge` = "none" (elasticflow), "overflow" (elasticflow-edge), "offload" (edgeflow)."""

    name = "elasticflow"
    preemptive = True

    def __init__(self, scenario: Scenario, seed: int = 0, edge: str = "none"):
        super().__init__(scenario, seed)
        self.static = static_tables(scenario)
        self.rates = Rates(self.static)
        self.pools = Pools(scenario, self.static, self.rates, edge)
        self.memory = Memory()
        self.admitted: set[int] = set()
        self.seen: set[int] = set()
        self.to_decline: set[int] = set()
        self._signature: tuple | None = None
        self._plan: dict[int, tuple[int, np.ndarray]] = {}  # task -> (node, allocation) wanted now
        self._starts: list[int] = []

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self.memory.clear()
        self.admitted.clear()
        self.seen.clear()
        self.to_decline.clear()
        self._signature, self._plan, self._starts = None, {}, []

    # ------------------------------------------------------------------ decisions
    def admit_new(self, board: Board) -> None:
        """Admission control of the tasks seen for the first time (in arrival order)."""
        new = [j for j in board.waiting() if j.id not in self.seen]
        if not new:
            return
        admitted = [j for j in board.jobs.values() if j.id in self.admitted]
        _, misses = reserve(self.pools, board, admitted)
        for job in new:
            self.seen.add(job.id)
            if job.deadline < 0:
                continue  # best-effort
            _, trial = reserve(self.pools, board, admitted + [job])
            if job.id not in trial and trial <= misses:
                admitted.append(job)
                self.admitted.add(job.id)
                misses = trial
            elif self.scenario.allow_decline:
                self.to_decline.add(job.id)
            # else: kept as best-effort (it may still finish in time on what is left)

    def replan(self, board: Board) -> None:
        self.to_decline &= set(board.jobs)
        self.admitted &= set(board.jobs)  # finished or declined tasks leave the books
        admitted = [j for j in board.jobs.values() if j.id in self.admitted]
        assign, _ = reserve(self.pools, board, admitted)
        pl = allocate(self.pools, board, assign, self.admitted, self.to_decline, self.static.max_running)
        self._plan = {}
        for t, n in pl.node.items():
            job = board.jobs[t]
            if job.running and pl.gpus[t] != int(job.alloc[self.static.gpu]):
                self._plan[t] = (n, pl.vec(job, pl.gpus[t]))
        for t in pl.starts:
            self._plan[t] = (pl.node[t], pl.vec(board.jobs[t], pl.gpus[t]))
        self._starts = list(pl.starts)

    # ------------------------------------------------------------------ one round
    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        board = Board(obs, self.static, self.memory)
        self.admit_new(board)
        signature = board.signature()
        if signature != self._signature:
            self.replan(board)
            self._signature = signature
        return self.realise(board, obs)

    def realise(self, board: Board, obs: dict[str, np.ndarray]) -> RoundActions:
        """This round's actions from the plan: every resize at once, one start and one decline per agent."""
        N, M, R = obs["running_alloc"].shape
        out = RoundActions.nothing(N, R)
        free = board.free.copy()
        if self.pools.elastic:
            realloc = np.full((N, M, R), -1, dtype=np.int64)
            for j in board.running():
                want = self._plan.get(j.id)
                if want is not None and not np.array_equal(want[1], j.alloc):
                    realloc[j.agent, j.row] = want[1]
                    free[j.node] += j.alloc - want[1]
            if (realloc >= 0).any():
                out.realloc = realloc
        started: set[int] = set()
        for t in self._starts:
            job = board.jobs.get(t)
            if job is None or job.running:
                continue
            node, alloc = self._plan[t]
            i = board.node_agent[node]
            place = next((p for a, p in job.places if a == i), None)
            if i in started or place is None or not board.can_start[i] or (alloc > free[node]).any():
                continue
            out.task[i], out.node[i], out.alloc[i] = place, board.node_local[node], alloc
            free[node] -= alloc
            started.add(i)
        if self.to_decline and "decline_mask" in obs:
            # tasks to decline are left out of the plan, so no agent starts one of them
            decline = np.full(N, -1, dtype=np.int64)
            for t in sorted(self.to_decline):
                job = board.jobs.get(t)
                if job is None or job.running:
                    continue
                i, p = next(((i, p) for i, p in job.places if decline[i] < 0 and obs["decline_mask"][i, p + 1]),
                            (-1, -1))
                if i >= 0:
                    decline[i] = p
            if (decline >= 0).any():
                out.decline = decline
        return out


class ElasticFlowEdgePolicy(ElasticFlowPolicy):
    """`elasticflow-edge`: edge GPUs as overflow capacity (module docstring)."""

    name = "elasticflow-edge"

    def __init__(self, scenario: Scenario, seed: int = 0):
        super().__init__(scenario, seed, edge="overflow")


class EdgeFlowPolicy(ElasticFlowPolicy):
    """`edgeflow`: offload to the edge the jobs whose deadline holds there (module docstring)."""

    name = "edgeflow"

    def __init__(self, scenario: Scenario, seed: int = 0):
        super().__init__(scenario, seed, edge="offload")
