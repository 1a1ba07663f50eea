"""How the learned policy acts, independent of what scores its choices (numpy only).

`ActingOptions` are the acting switches stored with a checkpoint and an exported file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ActingOptions:
    multi_task: bool = False  # emit a sequence of (task, node, allocation) choices per decision
    max_sequence: int = 4  # the longest such sequence
    bayes: bool = True  # resolve conflicts by the Bayes posterior (False: by picking probability alone)
    pointer: bool = True  # attention pointer over the window (False: uniform task choice, an ablation)
