"""What the paper's baselines (`optimus`, `tiresias` and their `-np` variants) share: which
task an agent admits in a round, the per-agent view of its running tasks, and the round loop
(`PaperBaseline.act`); each policy supplies only its allocation plan.

DESIGN.md: "Both admit at most one new task per agent per round (the first occupied window
place), and only while the cluster runs fewer than ⌊capacity / minimum⌋ tasks."

One detail DESIGN.md leaves open, pinned down from the authors' benchmark code: agents decide
in index order within a round, and an agent skips a window task that a lower-indexed agent
already chose in the same round (the authors keep a list of tasks chosen this round). So the
candidate is the first occupied window place whose task no lower agent has claimed. Without
the skip, the engine's conflict rule would turn the higher agent's choice into a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agents.base import Policy
from agents.heuristics.attained import AttainedService
from envs.actions import RoundActions
from tapfinger.sim.tables import static_tables
from tapfinger.sim.scenario import Scenario


@dataclass
class ClusterView:
    """One agent's running tasks (in the order they were started) plus its candidate, if any.

    Rows 0..n_running-1 are running tasks; row n_running is the candidate when
    `has_candidate`; any rows after it are look-ahead window tasks (non-preemptive variants
    plan with them to size the candidate's share).
    """

    place: np.ndarray  # [L] running place (index into the M axis), -1 candidate, -2 look-ahead
    task_id: np.ndarray  # [L]
    ttype: np.ndarray  # [L]
    node: np.ndarray  # [L] local node index
    progress: np.ndarray  # [L] float
    attained: np.ndarray  # [L] float, GPU-slots so far (0 unless the policy counts them)
    start: np.ndarray  # [L] slot it started (the current slot for the candidate)
    alloc: np.ndarray  # [L, R] current allocation (the candidate's is all zero)
    has_candidate: bool
    candidate_place: int  # window place of the candidate, -1 if none

    @property
    def size(self) -> int:
        return int(self.task_id.shape[0])

    @property
    def n_running(self) -> int:
        return int((self.place >= 0).sum())

    @property
    def cand(self) -> int:
        """Row of the candidate (only meaningful when `has_candidate`)."""
        return self.n_running

    def append_window(self, obs: dict[str, np.ndarray], i: int, place: int, node: int, marker: int) -> "ClusterView":
        """A copy with window place `place` of agent i appended as a fresh task on `node`."""
        R = self.alloc.shape[1]
        return ClusterView(
            place=np.append(self.place, marker),
            task_id=np.append(self.task_id, int(obs["window_id"][i, place])),
            ttype=np.append(self.ttype, int(obs["window_type"][i, place])),
            node=np.append(self.node, node),
            progress=np.append(self.progress, 0.0),
            attained=np.append(self.attained, 0.0),
            start=np.append(self.start, int(obs["slot"][i, 0])),  # it would start now
            alloc=np.vstack([self.alloc, np.zeros((1, R), dtype=np.int64)]),
            has_candidate=self.has_candidate or marker == -1,
            candidate_place=place if marker == -1 else self.candidate_place,
        )


class StartOrder:
    """Remembers in which order an agent's tasks started, to break ties the way the authors'
    code does (it keeps running tasks in a dict in start order). The engine reuses freed
    running places, so the running place index is not the start order."""

    def __init__(self) -> None:
        self._order: dict[int, int] = {}
        self._next = 0

    def reset(self) -> None:
        self._order.clear()
        self._next = 0

    def rank(self, task_ids: np.ndarray) -> np.ndarray:
        """Start rank of each id; ids never seen before get the next ranks in the given order
        (an agent starts at most one task per round and is asked every round, so at most one
        of its ids is new per call)."""
        out = np.empty(len(task_ids), dtype=np.int64)
        for j, t in enumerate(task_ids.tolist()):
            if t not in self._order:
                self._order[t] = self._next
                self._next += 1
            out[j] = self._order[t]
        return out


def pick_candidate(obs: dict[str, np.ndarray], i: int, claimed: set[int], cap: int,
                   skip_claimed: bool = True, startable_only: bool = False) -> int:
    """Window place agent i admits this round, or -1.

    The first occupied place whose task no lower agent chose this round (`claimed`), and only
    while the agent runs fewer than `cap` tasks (paused tasks count: they hold a place).
    `startable_only` (non-preemptive variants) skips places whose minimum does not fit in the
    resources free right now, since nothing will be freed for them.
    """
    n_running = int((obs["running_id"][i] >= 0).sum())
    if n_running >= cap:
        return -1
    for place in np.flatnonzero(obs["window_id"][i] >= 0):
        t = int(obs["window_id"][i, place])
        if skip_claimed and t in claimed:
            continue
        if startable_only and not obs["task_mask"][i, place + 1]:
            continue
        return int(place)
    return -1


def cluster_view(obs: dict[str, np.ndarray], i: int, order: StartOrder, candidate_place: int,
                 service: AttainedService | None = None) -> ClusterView:
    """Running tasks of agent i sorted by start order, then the candidate (if any); their
    attained service from `service` (zeros without one)."""
    ids = obs["running_id"][i]
    places = np.flatnonzero(ids >= 0)
    # register ids seen for the first time in start-slot order, then sort by start rank
    places = places[np.argsort(obs["running_start"][i][places], kind="stable")]
    places = places[np.argsort(order.rank(ids[places]), kind="stable")]
    R = obs["running_alloc"].shape[2]
    view = ClusterView(
        place=places.astype(np.int64),
        task_id=ids[places].astype(np.int64),
        ttype=obs["running_type"][i][places].astype(np.int64),
        node=obs["running_node"][i][places].astype(np.int64),
        progress=obs["running_progress"][i][places].astype(np.float64),
        attained=service.of(i, ids[places]) if service is not None else np.zeros(places.size),
        start=obs["running_start"][i][places].astype(np.int64),
        alloc=obs["running_alloc"][i][places].astype(np.int64).reshape(-1, R),
        has_candidate=False,
        candidate_place=-1,
    )
    if candidate_place >= 0:
        view = view.append_window(obs, i, candidate_place, 0, -1)  # node: chosen by the policy
    return view


def candidate_node(obs: dict[str, np.ndarray], i: int, reserved: np.ndarray, tmin: np.ndarray) -> int:
    """Local node for the candidate: the one with the most capacity left after the running
    tasks' `reserved` amounts ([Nn, R]) where its minimum fits; -1 if none. A one-node cluster
    always gets node 0 when the minimum fits."""
    live = obs["node_id"][i] >= 0
    left = obs["node_capacity"][i] - reserved
    fits = live & (left >= tmin).all(axis=1)
    if not fits.any():
        return -1
    score = np.where(fits, left.sum(axis=1), -1)
    return int(np.argmax(score))


class PaperBaseline(Policy):
    """The round loop of `optimus` and `tiresias`; subclasses supply `plan` and `reset_floor`.

    Per agent i, in index order:
    1. admission (`pick_candidate`): at most one candidate, only while the agent runs fewer
       than ⌊capacity / minimum⌋ tasks — the engine's own bound (`tapfinger.sim.tables.StaticTables.max_running`);
    2. the candidate's node: where its minimum fits once every running task is reset to
       `reset_floor` (preemptive), or in what is free now (non-preemptive);
    3. `plan` allocates every running task and the candidate from the node capacities;
    4. preemptive: every running task is re-allocated to its plan (all zero = pause), and
       the candidate starts with its plan if `plan_starts` accepts it. Non-preemptive: nothing
       running changes; the plan also holds the other waiting window tasks (as many as the
       cluster could still admit), so the candidate gets the share it would have under load,
       clipped to what is free now — planning the candidate alone would hand it everything.
    """

    preemptive = True

    def __init__(self, scenario: Scenario, seed: int = 0, skip_claimed: bool = True):
        super().__init__(scenario, seed)
        if self.preemptive and not scenario.allow_preemption:
            raise ValueError(f"scenario {scenario.name!r} does not allow preemption. Fix: use "
                             f"'{self.name}-np', or set allow_preemption = true")
        self.static = static_tables(scenario)  # the profiles an operator has measured
        self.skip_claimed = skip_claimed
        self.order = StartOrder()
        self.service: AttainedService | None = None  # set by a policy that plans by attained service

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self.order.reset()
        if self.service is not None:
            self.service.reset()

    # ------------------------------------------------------------------ what subclasses define
    def plan(self, view: ClusterView, capacity: np.ndarray) -> np.ndarray:
        """Allocation [L, R] of every row of `view` on node capacities `capacity` [Nn, R]."""
        raise NotImplementedError

    def reset_floor(self, view: ClusterView) -> np.ndarray:
        """What each running task keeps when the plan starts ([n_running, R])."""
        raise NotImplementedError

    def plan_starts(self, alloc: np.ndarray) -> bool:
        """Whether the candidate's planned allocation starts it."""
        return True

    # ------------------------------------------------------------------ the round
    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        N, M, R = obs["running_alloc"].shape
        out = RoundActions.nothing(N, R)
        if self.preemptive:
            out.realloc = np.full((N, M, R), -1, dtype=np.int64)
        claimed: set[int] = set()
        if self.service is not None:
            self.service.observe(obs)
        for i in range(N):
            cap_tasks = int(self.static.max_running[i])
            place = pick_candidate(obs, i, claimed, cap_tasks, self.skip_claimed,
                                   startable_only=not self.preemptive)
            view = cluster_view(obs, i, self.order, place, self.service)
            if view.size == 0:
                continue
            capacity = obs["node_capacity"][i].astype(np.int64)
            if view.has_candidate:
                claimed.add(int(view.task_id[view.cand]))  # chosen, even if it does not start
                view = self._place_window_tasks(obs, i, view, capacity, claimed, cap_tasks)
                if view.size == 0:
                    continue
            alloc = self.plan(view, capacity)
            running = np.arange(view.n_running)
            if self.preemptive and running.size:
                out.realloc[i, view.place[running]] = alloc[running]
            if view.has_candidate and self.plan_starts(alloc[view.cand]):
                a = alloc[view.cand]
                node = int(view.node[view.cand])
                if not self.preemptive:
                    a = np.maximum(np.minimum(a, obs["node_free"][i, node]),
                                   self.static.type_min[view.ttype[view.cand]])
                out.task[i], out.node[i], out.alloc[i] = view.candidate_place, node, a
        return out

    def _place_window_tasks(self, obs: dict[str, np.ndarray], i: int, view: ClusterView,
                            capacity: np.ndarray, claimed: set[int], cap_tasks: int) -> ClusterView:
        """Node of the candidate (and, non-preemptive, the look-ahead rows); drops the
        candidate if its minimum fits nowhere."""
        tmin = self.static.type_min
        if self.preemptive:
            reserved = np.zeros_like(capacity)
            np.add.at(reserved, view.node[: view.n_running], self.reset_floor(view))
        else:
            reserved = capacity - obs["node_free"][i]  # nothing is freed for it
        node = candidate_node(obs, i, reserved, tmin[view.ttype[view.cand]])
        base = cluster_view(obs, i, self.order, -1, self.service)
        if node < 0:
            return base
        view = base.append_window(obs, i, view.candidate_place, node, -1)
        if self.preemptive:
            return view
        # look-ahead: the other waiting tasks, placed where their minimums fit after the
        # running tasks' and the earlier rows' minimums (the plan resets everything)
        reserved = np.zeros_like(capacity)
        np.add.at(reserved, view.node, tmin[view.ttype])
        for place in np.flatnonzero(obs["window_id"][i] >= 0):
            if view.size >= cap_tasks:
                break
            t = int(obs["window_id"][i, place])
            if place == view.candidate_place or t in claimed:
                continue
            need = tmin[int(obs["window_type"][i, place])]
            n = candidate_node(obs, i, reserved, need)
            if n < 0:
                break
            reserved[n] += need
            view = view.append_window(obs, i, int(place), n, -2)
        return view
