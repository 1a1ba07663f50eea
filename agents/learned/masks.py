"""Action-mask bookkeeping of the learned policy's round loop (`agents.learned.acting`), which the
eager and the exported policies share: masks after a choice of a multi-task sequence, whether a
planned step is still playable. numpy only (the ONNX policy runs without torch).
"""

from __future__ import annotations

import numpy as np

MASK_KEYS = ("task_mask", "node_mask", "alloc_low", "alloc_high")


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
    m["task_mask"][1:] = (m["node_mask"].any(axis=1) & (room > 0)).astype(m["task_mask"].dtype)
    return m


def step_still_valid(obs: dict, agent: int, place: int, node: int, alloc: np.ndarray, task_id: int) -> bool:
    """Whether a planned start can still be played this round (same task in that place, still fits)."""
    return (obs["window_id"][agent, place] == task_id and bool(obs["task_mask"][agent, place + 1])
            and bool(obs["node_mask"][agent, place, node])
            and bool((alloc <= obs["alloc_high"][agent, node]).all()))
