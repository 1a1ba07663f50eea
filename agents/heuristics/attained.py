"""Attained service (slots × units each running task has received), counted by the scheduler
itself from what it observes: Tiresias' priority needs it, and the environment does not hand it out.

The unit is the resource Tiresias hands out on the task's node (`lead_resource`): GPUs on a node
that has any (GPU-slots, the paper's measure), CPUs on a node without GPUs (CPU-slots), where
counting GPUs would leave every task at 0 and a GPU hand-out would start none.

An allocation changes only in a round (a start or a re-allocation) and holds until the slot
ends, so the allocation a task held over a slot is the one the next slot's first observation
shows (slot ends change no allocation; they only remove the tasks that finished). A task
re-allocated in the last round of a slot, the round that ended it, is therefore counted at its
new allocation, and a paused task (all-zero allocation) at 0, both as the engine runs them.
Tasks that finished at the slot end are gone from the observation, and need no count.
"""

from __future__ import annotations

import numpy as np


def lead_resource(capacity: np.ndarray, gpu: int, cpu: int) -> np.ndarray:
    """Per node of `capacity` ([Nn, R]): the resource Tiresias hands out and counts service in,
    `gpu` on a node with at least one GPU, else `cpu`."""
    return np.where(capacity[:, gpu] > 0, gpu, cpu)


class AttainedService:
    """Per agent: service of each task running in its cluster, from the agent's own row.

    Call `observe` with every round's batched observations, in order; `reset` between episodes
    (an observation whose slot goes backwards also starts a new count: a new episode).
    """

    def __init__(self, gpu: int, cpu: int):
        self.gpu, self.cpu = gpu, cpu  # indices of the gpu and cpu resources
        # per agent: task id -> GPU-slots (CPU-slots for a task on a node without GPUs)
        self.gpu_slots: list[dict[int, float]] = []
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
                self._count_slot(self.gpu_slots[i], obs["running_id"][i], self._held(obs, i))
        self._slot = slot

    def _held(self, obs: dict[str, np.ndarray], i: int) -> np.ndarray:
        """Units of its node's lead resource each running place of agent i holds ([M])."""
        lead = lead_resource(obs["node_capacity"][i], self.gpu, self.cpu)
        alloc = obs["running_alloc"][i]
        return alloc[np.arange(alloc.shape[0]), lead[np.maximum(obs["running_node"][i], 0)]]

    @staticmethod
    def _count_slot(service: dict[int, float], ids: np.ndarray, units: np.ndarray) -> None:
        """Add the slot that just ended to each still-running task; forget the others."""
        live = {int(t): int(g) for t, g in zip(ids.tolist(), units.tolist(), strict=True) if t >= 0}
        for t in list(service):
            if t not in live:
                del service[t]  # finished
        for t, g in live.items():
            service[t] = service.get(t, 0.0) + g

    def of(self, agent: int, task_ids: np.ndarray) -> np.ndarray:
        """Service of each of these tasks of the agent's cluster (0 for one never counted)."""
        service = self.gpu_slots[agent] if agent < len(self.gpu_slots) else {}
        return np.asarray([service.get(int(t), 0.0) for t in task_ids], dtype=np.float64)
