"""What the deadline-aware baselines (`deadline_aware.py`) know: the whole system as a central
planner reads it from all agents' observation rows, plus what it remembers of earlier rounds.

A central planner (ElasticFlow and EdgeFlow schedule one cloud, or one cloud plus the edge, from
one place) sees every agent's row: each waiting task with the agents that see it and where, each
running task with its cluster, node, allocation and progress, each node's current capacity, free
resources and kind. Some facts are visible only at some moments, so `Memory` keeps them by task id:
a task's work (shown in windows, not for running tasks), its absolute deadline (the slots left at
first sight plus the slot), and the progress and node kind it last ran with (a preempted task is
back in a window, where its progress is not shown). Nothing here reads the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tapfinger.sim.progress import FINISH_EPS, SQRT_OFFSET
from tapfinger.sim.tables import StaticTables


@dataclass
class Job:
    """A task in the system, waiting or running, as the planner sees it."""

    id: int
    type: int
    work: float  # the estimate a scheduler is told
    deadline: int  # absolute slot (the task meets it when it completes before that slot), -1 = none
    progress: float  # last seen (0 for a task that never ran)
    last_kind: int  # node kind it last ran on (0 edge, 1 cloud), -1 = never ran
    places: list[tuple[int, int]] = field(default_factory=list)  # waiting: (agent, window place)
    agent: int = -1  # running: its cluster
    row: int = -1  # running: its place in the cluster's running list
    node: int = -1  # running: global node
    local: int = -1  # running: local node index
    alloc: np.ndarray | None = None  # running: current allocation

    @property
    def running(self) -> bool:
        return self.agent >= 0

    def remaining(self) -> float:
        """Work still to do, in units of the type's profiled work (progress rates are per unit)."""
        return max(1.0 - FINISH_EPS - self.progress, 0.0) * self.work


class Memory:
    """Per-episode facts a planner keeps by task id (see the module docstring)."""

    def __init__(self) -> None:
        self.work: dict[int, float] = {}
        self.deadline: dict[int, int] = {}
        self.progress: dict[int, float] = {}
        self.kind: dict[int, int] = {}

    def clear(self) -> None:
        for d in (self.work, self.deadline, self.progress, self.kind):
            d.clear()


class Board:
    """The system this round, read from the batched observations (every agent's row)."""

    def __init__(self, obs: dict[str, np.ndarray], static: StaticTables, memory: Memory):
        self.obs = obs
        self.slot = int(obs["slot"][0, 0])
        N = obs["window_id"].shape[0]
        self.N = N
        node_id = obs["node_id"]
        live = node_id >= 0
        self.node_agent = {int(g): i for i, row in enumerate(node_id) for g in row[row >= 0]}
        self.node_local = {int(g): int(j) for row in node_id for j, g in enumerate(row) if g >= 0}
        n_nodes = static.node_capacity.shape[0]
        R = static.node_capacity.shape[1]
        self.cap = np.zeros((n_nodes, R), dtype=np.int64)  # current capacity of every node
        self.free = np.zeros((n_nodes, R), dtype=np.int64)
        gi = node_id[live]
        self.cap[gi] = obs["node_capacity"][live]
        self.free[gi] = obs["node_free"][live]
        self.kind = np.asarray(static.node_kind, dtype=np.int64)
        # how many tasks each cluster may still start (paused tasks hold a running place too)
        self.can_start = (obs["running_id"] >= 0).sum(axis=1) < static.max_running
        self.jobs: dict[int, Job] = {}
        for i in range(N):
            for p in np.flatnonzero(obs["window_id"][i] >= 0):
                t = int(obs["window_id"][i, p])
                if t not in self.jobs:
                    memory.work[t] = float(obs["window_work"][i, p])
                    if t not in memory.deadline:
                        left = int(obs["window_deadline"][i, p])
                        memory.deadline[t] = -1 if left < 0 else self.slot + left
                    self.jobs[t] = Job(t, int(obs["window_type"][i, p]), memory.work[t], memory.deadline[t],
                                       memory.progress.get(t, 0.0), memory.kind.get(t, -1))
                self.jobs[t].places.append((i, int(p)))
        for i in range(N):
            for m in np.flatnonzero(obs["running_id"][i] >= 0):
                t = int(obs["running_id"][i, m])
                local = int(obs["running_node"][i, m])
                g = int(node_id[i, local])
                if t not in memory.deadline:  # only a task never seen waiting (not by these policies)
                    left = int(obs["running_deadline"][i, m]) if "running_deadline" in obs else -1
                    memory.deadline[t] = -1 if left < 0 else self.slot + left
                memory.progress[t] = float(obs["running_progress"][i, m])
                memory.kind[t] = int(self.kind[g])
                self.jobs[t] = Job(t, int(obs["running_type"][i, m]), memory.work.get(t, 1.0), memory.deadline[t],
                                   memory.progress[t], memory.kind[t], agent=i, row=int(m), node=g, local=local,
                                   alloc=obs["running_alloc"][i, m].astype(np.int64))

    def waiting(self) -> list[Job]:
        return sorted((j for j in self.jobs.values() if not j.running), key=lambda j: j.id)

    def running(self) -> list[Job]:
        return sorted((j for j in self.jobs.values() if j.running), key=lambda j: j.id)

    def slots_left(self, job: Job) -> int:
        """Slots from now (this one included) in which the job can still complete in time."""
        return job.deadline - self.slot if job.deadline >= 0 else -1

    def signature(self) -> tuple:
        """What makes a plan stale: the set of tasks in the system (arrivals, completions,
        declines) and the current capacities. A start moves a task from waiting to running
        and leaves the set unchanged."""
        return frozenset(self.jobs), self.cap.tobytes()


class Rates:
    """Progress per slot of each task type at each GPU count, from the static progress tables.

    The CPU count is the type's minimum (a throughput model ignores CPUs; the minimum still
    applies), other resources at their minimum. A synthetic model's sqrt(1.2 - p) term is taken
    at the task's current progress (exact for throughput and profile models, whose weight is 0).
    On a node the rate is multiplied by the static `node_speed` (a type's edge_speed on edge nodes)."""

    def __init__(self, static: StaticTables):
        self.static = static
        cpu, gpu = static.cpu, static.gpu
        self.G = int(static.grid_max[gpu])
        K = static.type_min.shape[0]
        cmin = np.minimum(static.type_min[:, cpu], static.grid_max[cpu])
        self.W = np.stack([static.weight[k, cmin[k], :] for k in range(K)])  # [K, G+1]
        self.B = np.stack([static.base[k, cmin[k], :] for k in range(K)])
        below = np.arange(self.G + 1)[None, :] < static.type_min[:, gpu][:, None]
        self.W[below] = 0.0
        self.B[below] = 0.0
        self.min_gpu = static.type_min[:, gpu].astype(np.int64)

    def table(self, job: Job, node: int) -> np.ndarray:
        """[G+1] progress per slot (in units of profiled work) at each GPU count on `node`."""
        k = job.type
        shape = np.sqrt(max(SQRT_OFFSET - job.progress, 0.0))
        return (self.W[k] * shape + self.B[k]) * float(self.static.node_speed[k, node])

    def alloc(self, k: int, gpus: int) -> np.ndarray:
        """The allocation of a type-k task holding `gpus` GPUs (everything else at its minimum;
        all zero for 0 GPUs: a paused task)."""
        a = self.static.type_min[k].astype(np.int64).copy()
        if gpus <= 0 and self.min_gpu[k] > 0:
            return np.zeros_like(a)
        a[self.static.gpu] = gpus
        return a


def slots_needed(remaining: float, rate: float, overhead: float = 0.0) -> float:
    """Slots to do `remaining` work at `rate` per slot after `overhead` slots without progress
    (inf when the rate is 0). A float: callers compare it with whole slots left."""
    if remaining <= 0:
        return 0.0
    if rate <= 0:
        return float("inf")
    return float(np.ceil(overhead + remaining / rate - 1e-9))
