"""Placement of a plan of `elasticflow`, `elasticflow-edge` and `edgeflow` (`deadline_aware.py`):
from the reservation (`deadline_plan.py`) to a node and a GPU count for every job, now.

A job runs on one node, so shares are packed onto nodes, in this order:
1. Running jobs keep their node and, tentatively, their allocation.
2. Admitted running cloud jobs below the share the reservation gives them now grow to it.
3. Admitted waiting cloud jobs, in deadline order, get their share now on the node that fits it
   most tightly; when none has room and the scenario is elastic, GPUs are reclaimed on one node
   from running jobs above their floor (best-effort jobs first, down to a pause; admitted jobs
   down to their share); failing that, the largest allowed count that fits anywhere.
4. Admitted jobs the reservation put on an edge unit free now start there (one GPU).
5. Best-effort jobs (no deadline, refused, or no longer able to meet theirs), in arrival order:
   paused ones resume at their minimum where there is room, waiting ones start at their minimum
   (elasticflow: the cloud; elasticflow-edge: the cloud, then the edge; edgeflow: the edge, then
   the cloud), never reclaiming anything.
6. Spare GPUs on each cloud node go, one step at a time (to the next allowed count), to the job
   there with the highest marginal gain: extra progress per slot per extra GPU, as a fraction of
   the job's work (its iterations/s gain over its iterations). A running job only grows when it
   already changes in this plan or when the growth saves more slots than the restart costs
   (at least one): resizing is not free, so a job is not resized for a marginal gain.
"""

from __future__ import annotations

import numpy as np

from agents.heuristics.deadline_plan import Assignment, Pools
from agents.heuristics.deadline_view import Board, Job, slots_needed


class Placement:
    """Tentative nodes and GPU counts of one plan, and the room they leave on each node."""

    def __init__(self, pools: Pools, board: Board, max_running: np.ndarray):
        self.pools, self.board = pools, board
        self.gpu = pools.static.gpu
        self.room = board.cap.copy()
        self.node: dict[int, int] = {}
        self.gpus: dict[int, int] = {}
        self.floor: dict[int, int] = {}  # running elastic cloud jobs: the fewest GPUs they may be cut to
        self.starts: list[int] = []  # waiting jobs to start now, in plan order
        self.slots_free = max_running - (board.obs["running_id"] >= 0).sum(axis=1)
        for j in board.running():
            self.node[j.id], self.gpus[j.id] = j.node, int(j.alloc[self.gpu])
            self.room[j.node] -= j.alloc

    # ------------------------------------------------------------------ bookkeeping
    def vec(self, job: Job, g: int) -> np.ndarray:
        """The allocation of `job` at g GPUs (a running job keeps its other resources)."""
        if job.running and g > 0 and job.alloc.any():
            a = job.alloc.copy()
            a[self.gpu] = g
            return a
        return self.pools.rates.alloc(job.type, g)

    def resize(self, job: Job, g: int) -> None:
        self.room[self.node[job.id]] += self.vec(job, self.gpus[job.id]) - self.vec(job, g)
        self.gpus[job.id] = g

    def start(self, job: Job, node: int, g: int) -> None:
        self.node[job.id], self.gpus[job.id] = node, g
        self.room[node] -= self.vec(job, g)
        self.starts.append(job.id)
        self.slots_free[self.board.node_agent[node]] -= 1

    def startable(self, job: Job, nodes: np.ndarray) -> list[int]:
        """Nodes of `nodes` whose cluster sees the waiting job and may start one more task."""
        agents = {a for a, _ in job.places}
        return [int(n) for n in nodes
                if self.board.node_agent.get(int(n)) in agents and self.slots_free[self.board.node_agent[int(n)]] > 0]

    def fits(self, job: Job, node: int, g: int) -> bool:
        return bool((self.room[node] >= self.vec(job, g)).all())

    # ------------------------------------------------------------------ steps
    def grow_running(self, job: Job, want: int) -> None:
        """Step 2: an admitted running job below its share now grows to it, reclaiming if needed."""
        cur = self.gpus[job.id]
        if want <= cur:
            return
        n = self.node[job.id]
        extra = self.vec(job, want) - self.vec(job, cur)
        if (self.room[n] >= extra).all() or self.reclaim(n, extra, keep=job.id):
            self.resize(job, want)

    def reclaim(self, node: int, need: np.ndarray, keep: int = -1) -> bool:
        """Cut running elastic jobs on `node` to their floors until `need` fits; undone if it cannot."""
        jobs = [self.board.jobs[t] for t, n in self.node.items()
                if n == node and t in self.floor and t != keep and self.gpus[t] > self.floor[t]]
        jobs.sort(key=lambda j: (self.floor[j.id] > 0, -self.gpus[j.id], j.id))  # best-effort first
        before = dict(self.gpus), self.room.copy()
        for j in jobs:
            self.resize(j, self.floor[j.id])
            if (self.room[node] >= need).all():
                return True
        self.gpus, self.room = before
        return False

    def place_cloud(self, job: Job, want: int) -> None:
        """Step 3: an admitted waiting job at `want` GPUs on the cloud (tightest fit, reclaim, less)."""
        nodes = self.startable(job, self.pools.cloud)
        fit = [n for n in nodes if self.fits(job, n, want)]
        if fit:
            self.start(job, min(fit, key=lambda n: (int(self.room[n, self.gpu]), n)), want)
            return
        if self.pools.elastic:
            for n in sorted(nodes, key=lambda n: (-self.reclaimable(n), n)):
                if self.reclaim(n, self.vec(job, want)):
                    self.start(job, n, want)
                    return
        for g in reversed([c for c in self.pools.counts[job.type] if c < want]):
            fit = [n for n in nodes if self.fits(job, n, g)]
            if fit:
                self.start(job, max(fit, key=lambda n: (int(self.room[n, self.gpu]), -n)), g)
                return

    def reclaimable(self, node: int) -> int:
        return int(self.room[node, self.gpu]) + sum(self.gpus[t] - f for t, f in self.floor.items()
                                                      if self.node[t] == node)

    def place_minimum(self, job: Job, tiers: tuple[str, ...]) -> None:
        """Step 5: a best-effort waiting job at its minimum, in the first tier with room."""
        for tier in tiers:
            if tier == "edge" and not self.pools.edge_ok(job):
                continue
            g = 1 if tier == "edge" else self.pools.counts[job.type][0] if self.pools.counts[job.type] else -1
            nodes = self.pools.edge if tier == "edge" else self.pools.cloud
            fit = [n for n in self.startable(job, nodes) if g >= 0 and self.fits(job, n, g)]
            if fit:
                self.start(job, min(fit, key=lambda n: (int(self.room[n, self.gpu]), n)), g)
                return

    def spread_spare(self) -> None:
        """Step 6: spare GPUs of each cloud node by marginal gain."""
        growable = {t for t in self.starts} | (set(self.floor) if self.pools.elastic else set())
        for n in self.pools.cloud:
            jobs = [self.board.jobs[t] for t in growable if self.node[t] == int(n)]
            while jobs:
                best = None
                for j in jobs:
                    step = self._step(j, int(n))
                    if step is not None and (best is None or (-step[0], j.id) < (-best[0], best[2].id)):
                        best = (step[0], step[1], j)
                if best is None:
                    break
                self.resize(best[2], best[1])

    def _step(self, job: Job, node: int) -> tuple[float, int] | None:
        """(gain per GPU, next count) of growing `job` one step on `node`, or None."""
        c = self.gpus[job.id]
        nxt = next((x for x in self.pools.counts[job.type] if x > c), None)
        if nxt is None or nxt > self.board.cap[node, self.gpu] or not (
                self.room[node] >= self.vec(job, nxt) - self.vec(job, c)).all():
            return None
        rate = self.pools.rates.table(job, node)
        gain = (rate[nxt] - (rate[c] if c > 0 else 0.0)) / max(job.work, 1e-12) / (nxt - c)
        if gain <= 1e-12:
            return None
        if job.running and not self._worth(job, nxt, rate):
            return None
        return gain, nxt

    def _worth(self, job: Job, nxt: int, rate: np.ndarray) -> bool:
        cur = int(job.alloc[self.gpu])
        if nxt == cur or self.gpus[job.id] != cur:
            return True  # back to what it holds, or it restarts in this plan anyway
        before = slots_needed(job.remaining(), rate[cur])
        after = slots_needed(job.remaining(), rate[nxt], self.pools.restart)
        return before - after >= max(1.0, self.pools.restart)


def allocate(pools: Pools, board: Board, assign: dict[int, Assignment], admitted: set[int],
             excluded: set[int], max_running: np.ndarray) -> Placement:
    """The plan now (steps 1-6 of the module docstring). `assign`: the reservation of the admitted
    jobs that can meet their deadlines; `excluded`: jobs about to be declined (left alone)."""
    pl = Placement(pools, board, max_running)
    live = [j for j in board.jobs.values() if j.id not in excluded]
    on_time = sorted((j for j in live if j.id in assign), key=lambda j: (j.deadline, j.id))
    best_effort = sorted((j for j in live if j.id not in assign), key=lambda j: j.id)
    if pools.elastic:
        for j in board.running():
            if j.node in pools.cloud:
                a = assign.get(j.id)
                pl.floor[j.id] = a.now if a is not None else 0
    for j in on_time:  # step 2
        if j.running and j.id in pl.floor:
            pl.grow_running(j, assign[j.id].now)
    for j in on_time:  # steps 3 and 4
        a = assign[j.id]
        if j.running or a.now <= 0:
            continue
        if a.tier == "cloud":
            pl.place_cloud(j, a.now)
        elif a.tier == "edge" and a.start == 0 and a.node in pl.startable(j, np.array([a.node])) \
                and pl.fits(j, a.node, 1):
            pl.start(j, a.node, 1)
    tiers = {"none": ("cloud",), "overflow": ("cloud", "edge"), "offload": ("edge", "cloud")}[pools.edge_mode]
    for j in best_effort:  # step 5
        if j.running:
            if pl.gpus[j.id] == 0 and j.id in pl.floor and pools.counts[j.type]:
                g = pools.counts[j.type][0]
                if pl.fits(j, j.node, g):
                    pl.resize(j, g)
        else:
            pl.place_minimum(j, tiers)
    pl.spread_spare()  # step 6
    return pl
