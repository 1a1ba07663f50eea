"""Queue-order baselines: `fifo`, `sjf` and `drf` (DESIGN.md, "Heuristics to compare against").

All three are non-preemptive and differ only in *which* startable window task an agent starts
in a round. They share one allocation rule, so that a comparison between them measures the
order alone:

    the fastest allocation that fits now (fewest expected slots from the scenario's progress
    tables, on any node of the cluster), and among equally fast allocations the one with the
    fewest resources.

Why this rule rather than the minimum: a non-preemptive task keeps its allocation to the end,
so the allocation it gets at start decides its run time; the minimum makes an LM task of the
synthetic model run 21 slots instead of 2 for the same GPU-slots. The "fewest resources among
equally fast" half keeps the rule from hoarding: LM gets 10 GPUs, not 16, and IMG (which gains
nothing above its minimum) gets exactly its minimum. The rule is myopic by design: it never
waits for a faster allocation — that is what `greedy` adds.

Each agent decides from its own observation row and the static progress tables only.
"""

from __future__ import annotations

from abc import abstractmethod

import numpy as np

from agents.base import Policy
from envs.actions import RoundActions
from agents.heuristics.common import feasible_places
from agents.heuristics.estimates import Option, SpeedModel, fastest_start
from tapfinger.sim.scenario import Scenario


class _OrderedPolicy(Policy):
    """Start, per agent and round, the startable window task with the smallest `priority`."""

    def __init__(self, scenario: Scenario, seed: int = 0):
        super().__init__(scenario, seed)
        self.model = SpeedModel(scenario)

    @abstractmethod
    def priority(self, obs: dict[str, np.ndarray], i: int, place: int, option: Option) -> tuple:
        """Sort key of window place `place` for agent i (smaller starts first)."""

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        N, R = obs["alloc_low"].shape[0], obs["alloc_low"].shape[2]
        out = RoundActions.nothing(N, R)
        for i in range(N):
            best_key, best = None, None
            for place in feasible_places(obs, i):
                start = fastest_start(self.model, obs, i, int(place))
                if start is None:
                    continue
                key = self.priority(obs, i, int(place), start[1])
                if best_key is None or key < best_key:
                    best_key, best = key, (int(place), start)
            if best is None:
                continue  # nothing fits: pass
            place, (node, opt) = best
            out.task[i], out.node[i], out.alloc[i] = place, node, opt.alloc
        return out


class FifoPolicy(_OrderedPolicy):
    """First in, first out: the longest-waiting startable task (ties: lower task id, i.e. the
    earlier arrival). A task that does not fit is skipped rather than blocking the queue, so
    this is FIFO with backfilling by the next startable task."""

    name = "fifo"

    def priority(self, obs: dict[str, np.ndarray], i: int, place: int, option: Option) -> tuple:
        return (-int(obs["window_wait"][i, place]), int(obs["window_id"][i, place]))


class SjfPolicy(_OrderedPolicy):
    """Shortest job first: the fewest expected slots at the allocation the task would get now
    (the shared rule above), ties by longer wait, then lower task id."""

    name = "sjf"

    def priority(self, obs: dict[str, np.ndarray], i: int, place: int, option: Option) -> tuple:
        return (option.slots, -int(obs["window_wait"][i, place]), int(obs["window_id"][i, place]))


class DrfPolicy(_OrderedPolicy):
    """Dominant resource fairness across task types, per cluster.

    Reading: the "users" of DRF are the task types, and each cluster is scheduled on its own
    (an agent only knows its own cluster). A type's dominant share is the largest, over
    resources, of the fraction of this cluster's capacity held by its running tasks. The agent
    starts a task of the waiting type with the smallest dominant share (progressive filling,
    one task per round), ties by longer wait, then lower task id. The allocation is the shared
    rule above; DRF decides the order, not the size.
    """

    name = "drf"

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        # Shares change only when a task starts or finishes, i.e. between rounds: compute once.
        self._shares = self._dominant_shares(obs)
        return super().act(obs)

    def _dominant_shares(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        K = self.model.K
        N = obs["running_type"].shape[0]
        capacity = obs["node_capacity"].sum(axis=1).astype(np.float64)  # [N, R]
        held = np.zeros((N, K, capacity.shape[1]))
        for i in range(N):
            live = obs["running_type"][i] >= 0
            np.add.at(held[i], obs["running_type"][i][live], obs["running_alloc"][i][live])
        return (held / np.maximum(capacity, 1)[:, None, :]).max(axis=2)  # [N, K]

    def priority(self, obs: dict[str, np.ndarray], i: int, place: int, option: Option) -> tuple:
        k = int(obs["window_type"][i, place])
        return (float(self._shares[i, k]), -int(obs["window_wait"][i, place]), int(obs["window_id"][i, place]))
