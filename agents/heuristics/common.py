"""Small helpers shared by heuristics: reading one agent's row of the batched observations."""

from __future__ import annotations

import numpy as np


def feasible_places(obs: dict[str, np.ndarray], i: int) -> np.ndarray:
    """Window places agent i may start now (task_mask without the do-nothing entry)."""
    return np.flatnonzero(obs["task_mask"][i, 1:])


def occupied_places(obs: dict[str, np.ndarray], i: int) -> np.ndarray:
    return np.flatnonzero(obs["window_id"][i] >= 0)


def fitting_nodes(obs: dict[str, np.ndarray], i: int, place: int, alloc: np.ndarray | None = None) -> np.ndarray:
    """Local nodes where the task at `place` fits at its minimum (or at `alloc` if given)."""
    if alloc is None:
        return np.flatnonzero(obs["node_mask"][i, place])
    ok = (obs["alloc_high"][i] >= alloc).all(axis=1) & (obs["node_id"][i] >= 0)
    return np.flatnonzero(ok)


def alloc_bounds(obs: dict[str, np.ndarray], i: int, place: int, node: int) -> tuple[np.ndarray, np.ndarray]:
    """Allowed interval [low, high] of each resource for that task on that node."""
    return obs["alloc_low"][i, place], obs["alloc_high"][i, node]
