"""The reservation behind `elasticflow`, `elasticflow-edge` and `edgeflow` (`deadline_aware.py`):
each admitted job's minimum satisfactory share, found slot by slot over the time ahead.

**Cloud GPUs** are one pool: free[h] = the GPUs of the pool's nodes at their current capacity, for
every slot h from now to the latest deadline. Jobs are planned in deadline order (ties: lower id).
A job's minimum satisfactory share is the fewest GPUs x in 1, 2, 4, ... (up to the grid and the
largest node) such that, holding a[h] = min(x, free[h]) (floored to an allowed count) in each slot,
its progress sum reaches its remaining work within its slots left; those a[h] are then reserved
(free[h] -= a[h]) for the jobs after it. A restart costs `restart_seconds` of progress: a running job
whose share would change, and a preempted job restarting on the same kind of node (the other kind:
`migration_seconds`), count it at the start. Node boundaries are left to placement (a share never
exceeds the largest node).

**Edge GPUs** (elasticflow-edge, edgeflow) are units of one GPU (EdgeFlow runs one edge GPU per job):
each is free from some slot on (when the job holding it is predicted to finish). A job fits the edge
when some unit of a node whose cluster sees it frees up early enough that the job, at one GPU times
its type's edge speed, completes within its slots left; it takes the earliest such unit.

Running jobs that cannot change keep what they hold: on the edge always (jobs there are never
resized), and on the cloud when the scenario forbids preemption.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.heuristics.deadline_view import Board, Job, Rates, slots_needed

EDGE_MODES = ("none", "overflow", "offload")  # elasticflow, elasticflow-edge, edgeflow


@dataclass
class Assignment:
    """Where the reservation put a job."""

    tier: str  # "cloud", "edge" or "fixed" (a running job that keeps its allocation)
    share: int  # GPUs: the minimum satisfactory share (cloud), 1 (edge), or what it holds (fixed)
    now: int  # GPUs the reservation gives it in the current slot (0: it waits)
    node: int = -1  # edge: the node of its unit
    start: int = 0  # edge: slots from now until its unit is free


class Pools:
    """Which nodes a policy plans on, the GPU counts it tries, and the restart costs in slots."""

    def __init__(self, scenario, static, rates: Rates, edge: str):
        if edge not in EDGE_MODES:
            raise ValueError(f"edge mode {edge!r}: use one of {', '.join(EDGE_MODES)}")
        self.static = static
        self.rates = rates
        self.edge_mode = edge
        kinds = np.asarray(static.node_kind)
        has_cloud = bool((np.asarray(static.cluster_kind) == 1).any())
        # without any cloud cluster every node is "the cluster" and there is no edge to add
        self.cloud = np.flatnonzero(kinds == 1) if has_cloud else np.arange(kinds.size)
        self.edge = np.flatnonzero(kinds == 0) if has_cloud and edge != "none" else np.zeros(0, dtype=np.int64)
        self.elastic = bool(scenario.allow_preemption)
        self.restart = scenario.restart_seconds / scenario.slot_seconds
        self.migrate = scenario.migration_seconds / scenario.slot_seconds
        G = rates.G
        self.counts = []
        for k in range(static.type_min.shape[0]):
            m = int(rates.min_gpu[k])
            powers = [1 << j for j in range(G.bit_length() + 1) if max(m, 1) <= (1 << j) <= G]
            self.counts.append(sorted({m, *powers} if m <= G else set()))
        big = int(max(static.node_capacity[:, static.gpu].max(), G)) + 1
        # floor[k][v]: the largest allowed count <= v, -1 if none (indexes a rate table padded with 0)
        self.floor = []
        for cs in self.counts:
            f = np.full(big + 1, -1, dtype=np.int64)
            for c in cs:
                f[c:] = c
            self.floor.append(f)

    def overhead(self, job: Job, kind: int, changes: bool) -> float:
        """Slots without progress before `job` runs on a node of `kind` (0 edge, 1 cloud)."""
        if job.running:
            return self.restart if changes else 0.0
        if job.progress <= 0 or job.last_kind < 0:
            return 0.0  # a fresh start
        return self.restart if job.last_kind == kind else self.migrate

    def edge_ok(self, job: Job) -> bool:
        return self.edge.size > 0 and int(self.rates.min_gpu[job.type]) <= 1


class Reservation:
    """One planning pass over the time ahead (see the module docstring)."""

    def __init__(self, pools: Pools, board: Board, horizon: int):
        self.pools, self.board = pools, board
        gpu = pools.static.gpu
        self.H = max(int(horizon), 1)
        self.free = np.full(self.H, int(board.cap[pools.cloud, gpu].sum()), dtype=np.int64)
        self.units: list[list[int]] = []  # [free from (slots from now), node]
        held: dict[int, list[int]] = {}
        for j in board.running():
            if j.node in pools.edge:
                held.setdefault(j.node, []).append(self._finish(j, int(j.alloc[gpu])))
        for n in pools.edge:
            ends = sorted(held.get(int(n), []))
            total = max(int(board.cap[n, gpu]), len(ends))
            self.units += [[e, int(n)] for e in ends] + [[0, int(n)] for _ in range(total - len(ends))]
        if not pools.elastic:  # running cloud jobs keep their allocation to the end
            for j in board.running():
                if j.node in pools.cloud:
                    g = int(j.alloc[gpu])
                    self.free[: min(self._finish(j, g), self.H)] -= g

    def _finish(self, job: Job, gpus: int) -> int:
        """Slots a running job still needs at what it holds (a capped large number if never)."""
        rate = self.pools.rates.table(job, job.node)[min(gpus, self.pools.rates.G)]
        n = slots_needed(job.remaining(), rate)
        return int(min(n, 10 * self.H + 10)) if np.isfinite(n) else 10 * self.H + 10

    def place(self, job: Job) -> Assignment | None:
        """Reserve for `job` in the policy's order of tiers; None if it cannot meet its deadline."""
        L = self.board.slots_left(job)
        if L <= 0:
            return None
        gpu = self.pools.static.gpu
        if job.running and (job.node in self.pools.edge or not self.pools.elastic):
            g = int(job.alloc[gpu])
            return Assignment("fixed", g, g) if self._finish(job, g) <= L else None
        if job.running:
            return self.cloud_share(job, L)
        tiers = {"none": ("cloud",), "overflow": ("cloud", "edge"), "offload": ("edge", "cloud")}
        for tier in tiers[self.pools.edge_mode]:
            got = self.cloud_share(job, L) if tier == "cloud" else self.edge_unit(job, L)
            if got is not None:
                return got
        return None

    def sees(self, job: Job, node: int) -> bool:
        """Whether the job may be started on `node` (a waiting job: its cluster sees it)."""
        if job.running:
            return job.node == node
        return any(a == self.board.node_agent.get(node) for a, _ in job.places)

    def cloud_share(self, job: Job, L: int) -> Assignment | None:
        pools = self.pools
        gpu = pools.static.gpu
        nodes = [int(n) for n in pools.cloud if self.sees(job, int(n))]
        node_max = max((int(self.board.cap[n, gpu]) for n in nodes), default=0)
        if node_max <= 0:
            return None
        kind = int(self.board.kind[nodes[0]])
        rates = np.append(pools.rates.table(job, nodes[0]), 0.0)  # index -1: no GPUs
        floor = pools.floor[job.type]
        L = min(L, self.H)
        free = np.maximum(self.free[:L], 0)
        cur = int(job.alloc[gpu]) if job.running else -1
        for x in pools.counts[job.type]:
            if x > node_max:
                break
            a = floor[np.minimum(free, x)]
            prog = np.cumsum(rates[a])
            need = job.remaining() + pools.overhead(job, kind, x != cur) * rates[x]
            idx = int(np.searchsorted(prog, need - 1e-12))
            if idx < L:
                self.free[: idx + 1] -= np.maximum(a[: idx + 1], 0)
                return Assignment("cloud", x, max(int(a[0]), 0))
        return None

    def edge_unit(self, job: Job, L: int) -> Assignment | None:
        if not self.pools.edge_ok(job):
            return None
        best = None
        for u, (start, n) in enumerate(self.units):
            if not self.sees(job, n):
                continue
            rate = self.pools.rates.table(job, n)[1]
            need = slots_needed(job.remaining(), rate, self.pools.overhead(job, 0, True))
            if start + need <= L and (best is None or (start, n) < best[:2]):
                best = (start, n, u, int(need))
        if best is None:
            return None
        start, n, u, need = best
        self.units[u][0] = start + need
        return Assignment("edge", 1, 1 if start == 0 else 0, node=n, start=start)


def reserve(pools: Pools, board: Board, jobs: list[Job]) -> tuple[dict[int, Assignment], set[int]]:
    """Plan `jobs` (admitted ones, each with a deadline) in deadline order: their assignments,
    and the ids of those that cannot meet their deadlines given the ones before them."""
    order = sorted(jobs, key=lambda j: (j.deadline, j.id))
    horizon = max((board.slots_left(j) for j in order), default=1) + 1
    res = Reservation(pools, board, horizon)
    out: dict[int, Assignment] = {}
    misses: set[int] = set()
    for j in order:
        got = res.place(j)
        if got is None:
            misses.add(j.id)
        else:
            out[j.id] = got
    return out, misses
