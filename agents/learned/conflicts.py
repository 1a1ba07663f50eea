"""Bayes-based resolution of conflicts: several agents picked the same task in one round.

The posterior that agent i should host the task is proportional to (agent i's probability of
picking it) × (prior: a softmax over the competitors of how many times the task's minimum fits in
their free resources). The argmax wins; the others do nothing this round. `bayes=False` decides by
the picking probability alone (the ablation). Ties, and posteriors within `ties.POSTERIOR_RTOL` of
the best (what float rounding in another runtime may turn either way), go to the lowest agent
index (`agents.learned.ties`).
"""

from __future__ import annotations

import numpy as np

from agents.learned.ties import lowest_near_max


def fit_count(node_free: np.ndarray, node_valid: np.ndarray, minimum: np.ndarray) -> int:
    """How many times `minimum` fits in a cluster's free resources, node by node."""
    need = np.where(minimum > 0, minimum, 1)
    per_node = np.where(minimum > 0, node_free // need, np.iinfo(np.int64).max).min(axis=1)
    return int(per_node[node_valid].sum())


def resolve(task_ids: np.ndarray, probs: np.ndarray, fits: np.ndarray, bayes: bool = True) -> np.ndarray:
    """task_ids[i] = task agent i starts this round (-1 = none), probs[i] its picking probability,
    fits[i] the prior's fit count. Returns a bool array: which agents keep their start."""
    keep = task_ids >= 0
    for t in np.unique(task_ids[task_ids >= 0]):
        rivals = np.flatnonzero(task_ids == t)
        if rivals.size < 2:
            continue
        if bayes:
            f = fits[rivals].astype(np.float64)
            prior = np.exp(f - f.max())
            prior /= prior.sum()
            posterior = probs[rivals] * prior
        else:
            posterior = probs[rivals].astype(np.float64)
        winner = rivals[lowest_near_max(posterior)]  # near-ties: lowest agent index, as the environment
        keep[rivals] = False
        keep[winner] = True
    return keep
