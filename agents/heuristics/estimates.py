"""What a scheduler can predict from the scenario's progress tables: how many slots a task needs
under an allocation, how long a running task still runs, and which allocations are worth
considering at all.

Everything here is static scenario knowledge (the profiled speed of each task type), which a
real operator has; nothing reads the engine's hidden state. Progress is deterministic given the
allocation, so these predictions are exact for a task that keeps its allocation (the
non-preemptive case), up to the float32 rounding of the observed progress.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tapfinger.sim.progress import NEVER, slots_to_finish
from tapfinger.sim.scenario import Scenario
from tapfinger.sim.speed import efficient_allocations, slot_table
from tapfinger.sim.tables import static_tables


@dataclass(frozen=True)
class Option:
    """One allocation worth considering for a task type: `slots` to finish from scratch with `alloc`."""

    slots: int
    alloc: np.ndarray  # [R], the minimum in every resource that does not change speed


class SpeedModel:
    """Expected slots per (type, cpu, gpu) and the Pareto-efficient allocations of each type.

    An allocation is *efficient* if no other allocation is at least as fast with no more of
    either speed resource (cpu, gpu). Only efficient allocations can be the right choice for a
    scheduler that minimises completion time and prefers fewer resources among equally fast
    ones, so the heuristics search this short list instead of the whole grid.
    """

    def __init__(self, scenario: Scenario):
        st = static_tables(scenario)
        self.static = st
        self.scenario = scenario
        self.R = scenario.num_resources
        self.cpu, self.gpu = st.cpu, st.gpu
        self.K = len(scenario.task_types)
        self.slots = slot_table(scenario)  # [K, C+1, G+1], NEVER below the minimum (read-only)
        self.options = [self._efficient(k, 1.0) for k in range(self.K)]
        self._work_cache: dict[tuple[int, float], list[Option]] = {}

    # -------------------------------------------------------------- per-allocation predictions
    def slots_for(self, k: int, alloc: np.ndarray, work: float = 1.0) -> int:
        """Slots a new task of type k needs with `alloc` (NEVER below its minimum)."""
        if np.any(alloc < self.static.type_min[k]):
            return NEVER
        c, g = self._speed_index(alloc)
        if work == 1.0:
            return int(self.slots[k, c, g])
        return slots_to_finish(self.static.weight[k, c, g], self.static.base[k, c, g], work)

    def remaining(self, k: int, alloc: np.ndarray, progress: float, work: float = 1.0) -> int:
        """Slots a running task of type k still needs (at least 1)."""
        if np.any(alloc < self.static.type_min[k]):
            return NEVER
        c, g = self._speed_index(alloc)
        # a live task ends at a slot end at the earliest (its observed progress is rounded)
        return max(slots_to_finish(self.static.weight[k, c, g], self.static.base[k, c, g], work, float(progress)), 1)

    def _speed_index(self, alloc: np.ndarray) -> tuple[int, int]:
        st = self.static
        return (min(int(alloc[st.cpu]), int(st.grid_max[st.cpu])), min(int(alloc[st.gpu]), int(st.grid_max[st.gpu])))

    # -------------------------------------------------------------- efficient allocations
    def options_for(self, k: int, work: float = 1.0) -> list[Option]:
        """Efficient allocations of type k, fastest first (cheapest first among equally fast)."""
        if work == 1.0:
            return self.options[k]
        key = (k, round(float(work), 6))
        if key not in self._work_cache:
            self._work_cache[key] = self._efficient(k, float(work))
        return self._work_cache[key]

    def _efficient(self, k: int, work: float) -> list[Option]:
        st = self.static
        table = self.slots if work == 1.0 else slot_table(self.scenario, work)
        low = (int(st.type_min[k, st.cpu]), int(st.type_min[k, st.gpu]))
        high = (int(st.grid_max[st.cpu]), int(st.grid_max[st.gpu]))
        out = []
        for s, c, g in efficient_allocations(table[k], low, high).tolist():
            alloc = st.type_min[k].copy()
            alloc[st.cpu], alloc[st.gpu] = c, g
            out.append(Option(s, alloc))
        return out

    def best_slots(self, k: int, capacity: np.ndarray, work: float = 1.0) -> int:
        """Fastest a type-k task can run on a node of `capacity` when the node is empty."""
        for opt in self.options_for(k, work):
            if np.all(opt.alloc <= capacity):
                return opt.slots
        return NEVER

    def fastest_fit(self, k: int, free: np.ndarray, work: float = 1.0) -> Option | None:
        """The fastest efficient allocation that fits in `free` (ties: fewest resources), or None.

        `free` is [R] for one node; a task's allocation must be on a single node."""
        for opt in self.options_for(k, work):
            if np.all(opt.alloc <= free):
                return opt
        return None


def fastest_start(model: SpeedModel, obs: dict[str, np.ndarray], i: int, place: int) -> tuple[int, Option] | None:
    """Agent i's fastest way to start window place `place` now: (local node, option), or None.

    Among the nodes where the task fits, the one giving the fewest expected slots; among equally
    fast ones the cheaper allocation, then the lower node index. Uses agent i's row only."""
    if not obs["task_mask"][i, place + 1]:
        return None
    k = int(obs["window_type"][i, place])
    work = float(obs["window_work"][i, place])
    best: tuple[int, Option] | None = None
    for n in np.flatnonzero(obs["node_mask"][i, place]):
        opt = model.fastest_fit(k, obs["alloc_high"][i, n], work)
        if opt is None:
            continue
        if best is None or (opt.slots, int(opt.alloc.sum())) < (best[1].slots, int(best[1].alloc.sum())):
            best = (int(n), opt)
    return best
