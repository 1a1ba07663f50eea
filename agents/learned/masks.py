"""Action-mask bookkeeping of the learned policy's round loop (`agents.learned.acting`), which the
eager and the exported policies share: the masks of a decision, masks after a choice of a
multi-task sequence, whether a planned step is still playable. numpy only (the ONNX policy runs
without torch).

With declines (`ModelConfig.decline`) a decision's `task_mask` is [2W+1]: the observation's
task_mask (0 = do nothing, i = start place i-1) followed by its decline_mask[1:] (W+i = decline
place i-1); the other masks are the observation's.
"""

from __future__ import annotations

import numpy as np

MASK_KEYS = ("task_mask", "node_mask", "alloc_low", "alloc_high")


def can_decide(obs: dict[str, np.ndarray], decline: bool = False) -> np.ndarray:
    """[N] bool: which agents have a choice besides doing nothing (a startable task, or with
    `decline` a task they may decline)."""
    able = obs["task_mask"][:, 1:].any(axis=1)
    if decline:
        able = able | obs["decline_mask"][:, 1:].any(axis=1)
    return able


def decision_masks(obs: dict[str, np.ndarray], rows: np.ndarray, decline: bool = False) -> dict[str, np.ndarray]:
    """The masks of the agents `rows` ([S, ...] each, copies): the observation's, with the decline
    choices appended to task_mask when `decline`."""
    m = {k: obs[k][rows] for k in MASK_KEYS}  # fancy indexing copies: edits stay local
    if decline:
        m["task_mask"] = np.concatenate([m["task_mask"], obs["decline_mask"][rows][:, 1:]], axis=1)
    return m


def update_masks(m: dict[str, np.ndarray], node_free: np.ndarray, place: int, node: int, alloc: np.ndarray,
                 grid: np.ndarray, occupied: np.ndarray, room: int) -> dict[str, np.ndarray]:
    """Masks after choosing (place, node, alloc): the task is taken and the node has less free."""
    m = {k: v.copy() for k, v in m.items()}
    node_free[node] -= alloc
    m["alloc_high"][node] = np.minimum(node_free[node], grid)
    occupied[place] = False
    # padded nodes have alloc_high 0, below every task's (positive somewhere) minimum
    fits = (m["alloc_low"][:, None, :] <= m["alloc_high"][None, :, :]).all(axis=2)
    m["node_mask"] = (fits & occupied[:, None]).astype(m["node_mask"].dtype)
    W = occupied.shape[0]
    m["task_mask"][1:W + 1] = (m["node_mask"].any(axis=1) & (room > 0)).astype(m["task_mask"].dtype)
    if m["task_mask"].shape[0] > W + 1:  # decline choices: a task planned to start is not declined
        m["task_mask"][W + 1:] &= occupied.astype(m["task_mask"].dtype)
    return m


def step_still_valid(obs: dict, agent: int, place: int, node: int, alloc: np.ndarray, task_id: int,
                     decline: bool = False) -> bool:
    """Whether a planned start (a decline with `decline`) can still be played this round (same task
    in that place, still fits; still declinable)."""
    if decline:
        return obs["window_id"][agent, place] == task_id and bool(obs["decline_mask"][agent, place + 1])
    return (obs["window_id"][agent, place] == task_id and bool(obs["task_mask"][agent, place + 1])
            and bool(obs["node_mask"][agent, place, node])
            and bool((alloc <= obs["alloc_high"][agent, node]).all()))
