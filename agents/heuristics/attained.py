"""Attained service (GPU-slots each running task has received), counted by the scheduler itself
from what it observes: Tiresias' priority needs it, and the environment does not hand it out.

An allocation changes only in a round (a start or a re-allocation) and holds until the slot
ends, so the allocation a task held over a slot is the one the next slot's first observation
shows (slot ends change no allocation; they only remove the tasks that finished). A task
re-allocated in the last round of a slot, the round that ended it, is therefore counted at its
new allocation, and a paused task (all-zero allocation) at 0 GPUs, both as the engine runs
them. Tasks that finished at the slot end are gone from the observation, and need no count.
"""

from __future__ import annotations

import numpy as np


class AttainedService:
    """Per agent: GPU-slots of each task running in its cluster, from the agent's own row.

    Call `observe` with every round's batched observations, in order; `reset` between episodes
    (an observation whose slot goes backwards also starts a new count: a new episode).
    """

    def __init__(self, gpu: int):
        self.gpu = gpu  # index of the gpu resource
        self.gpu_slots: list[dict[int, float]] = []  # per agent: task id -> GPU-slots
        self._slot: int | None = None  # slot of the last observation

    def reset(self) -> None:
        self.gpu_slots = []
        self._slot = None

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        slot = int(obs["slot"][0, 0])
        N = obs["running_id"].shape[0]
        if self._slot is not None and slot < self._slot:
            self.reset()
        if len(self.gpu_slots) != N:
            self.gpu_slots = [{} for _ in range(N)]
        if self._slot is not None and slot > self._slot:  # first round of a new slot
            for i in range(N):
                self._count_slot(self.gpu_slots[i], obs["running_id"][i], obs["running_alloc"][i, :, self.gpu])
        self._slot = slot

    @staticmethod
    def _count_slot(service: dict[int, float], ids: np.ndarray, gpus: np.ndarray) -> None:
        """Add the slot that just ended to each still-running task; forget the others."""
        live = {int(t): int(g) for t, g in zip(ids.tolist(), gpus.tolist()) if t >= 0}
        for t in list(service):
            if t not in live:
                del service[t]  # finished
        for t, g in live.items():
            service[t] = service.get(t, 0.0) + g

    def of(self, agent: int, task_ids: np.ndarray) -> np.ndarray:
        """GPU-slots of each of these tasks of the agent's cluster (0 for one never counted)."""
        service = self.gpu_slots[agent] if agent < len(self.gpu_slots) else {}
        return np.asarray([service.get(int(t), 0.0) for t in task_ids], dtype=np.float64)
