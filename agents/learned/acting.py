"""How the learned policy acts, independent of what scores its choices (numpy only).

One round of the learned policy, written once for every runtime: the eager torch network
(`agents.learned.policy.Planner`) and the exported programs (`agents.exported.ExportedPolicy`)
only supply a `Scorer`, which scores a batch of deciding agents; everything else is here:

- plans: in multi-task mode an agent emits a sequence of (task, node, allocation) choices in one
  decision, with its masks updated after each choice (the chosen task removed, the node's free
  resources reduced). The environment starts one task per agent per round, so the rest of the
  sequence is played in the following rounds of the same slot (dropped if a step has become
  infeasible, e.g. another cluster started that task; an agent left without a playable step
  decides afresh in that round). Plans are made for one slot. PPO learns a decision as the
  product of its steps' probabilities, each under the masks it was chosen with (`Step.masks`).
- liveness: a cluster that runs nothing and has a startable task must start one (its "do
  nothing" choice is masked at the first choice of its decision), so no policy can stall an
  episode forever. The rule asks for one start only: later choices of a sequence may pass.
- conflicts: several agents starting the same task in a round are resolved by the Bayes
  posterior (`agents.learned.conflicts`).
- declines (a network with `ModelConfig.decline`, scenarios with `allow_decline`): the task choice
  also offers "decline window place i" (`agents.learned.masks.decision_masks`), so an agent with
  a task it may decline decides even when it can start nothing. A decline claims its task in
  conflict resolution like a start (the same rule over task ids), satisfies the liveness rule,
  and ends a multi-task sequence (the simplest rule: the decline is the sequence's last step,
  played in its turn like a start). It reaches the engine as `RoundActions.decline_place`.
- greedy hints (a network with `ModelConfig.greedy_hint`): each round, the `greedy` heuristic's
  proposal for every agent (`HINT_KEYS`) joins the round's arrays, for the network to copy or
  deviate from. The planner owns that `GreedyPolicy` and shows it every round's observations,
  also rounds in which nobody decides: greedy remembers the work of the tasks it saw waiting.
- node faults (a network with `ModelConfig.node_faults`): the round's graph arrays carry the
  node-health columns (`envs.graph.graph_arrays(..., node_faults=True)`); nothing else changes.

This module imports neither torch nor torch_geometric: the ONNX policy runs without them.
`ActingOptions` are the acting switches stored with a checkpoint and an exported file.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from agents.heuristics.greedy import GreedyPolicy
from agents.learned.conflicts import fit_count, resolve
from agents.learned.masks import MASK_KEYS, can_decide, decision_masks, step_still_valid, update_masks
from envs.actions import RoundActions
from envs.graph import graph_arrays
from tapfinger.sim.scenario import Scenario
from tapfinger.sim.tables import static_tables


@dataclass
class ActingOptions:
    multi_task: bool = False  # a sequence of (task, node, allocation) choices per decision (training: learn so)
    max_sequence: int = 4  # the longest such sequence (with --multi-task)
    bayes: bool = True  # resolve conflicts by the Bayes posterior (False: by picking probability alone)
    pointer: bool = True  # attention pointer over the window (False: uniform task choice, an ablation)


# --------------------------------------------------------------------------- what a round records
@dataclass
class Step:
    masks: dict[str, np.ndarray]  # this agent's masks when the choice was made
    place: int  # window place started (or declined), -1 = do nothing
    node: int  # unused (0) for a decline
    alloc: np.ndarray  # unused (zeros) for a decline
    task_id: int
    prob: float  # probability with which the task was picked (for conflict posteriors)
    logp_task: float = 0.0
    logp_rest: float = 0.0  # node + allocation (0 for a decline)
    decline: bool = False  # the choice declines the task at `place` instead of starting it


@dataclass
class AgentDecision:
    """A decision of one agent in one round: what PPO learns from."""

    agent: int
    steps: list[Step]
    value: float
    lost_conflict: bool = False


@dataclass
class RoundRecord:
    arrays: dict[str, np.ndarray]  # the round's round_arrays ({} if not kept: RoundPlanner.record_arrays)
    decisions: list[AgentDecision] = field(default_factory=list)


# Greedy's proposal for each agent, in a round's arrays: hint_task [N, W+1] float32, a one-hot over
# the task choices (index 0 = do nothing, as task_mask); hint_node [N] int64, the local node of the
# proposed start (-1 = none); hint_alloc [N, R] int64, its amount of each resource (-1 = none).
HINT_KEYS = ("hint_task", "hint_node", "hint_alloc")


def hint_arrays(actions: RoundActions, window: int) -> dict[str, np.ndarray]:
    """`HINT_KEYS` from greedy's actions of a round."""
    starts = actions.task >= 0
    task = np.zeros((actions.task.shape[0], window + 1), dtype=np.float32)
    task[np.arange(task.shape[0]), actions.task + 1] = 1.0
    return {"hint_task": task,
            "hint_node": np.where(starts, actions.node, -1).astype(np.int64),
            "hint_alloc": np.where(starts[:, None], actions.alloc, -1).astype(np.int64)}


def round_arrays(obs: dict[str, np.ndarray], scenario: Scenario, node_faults: bool = False
                 ) -> dict[str, np.ndarray]:
    """What one round needs to be scored and stored: its graph arrays (with the node-health columns
    when `node_faults`) plus the per-agent masks and node ids (`agents.learned.batch.collate` and
    the exported program's feeds are built from it)."""
    g = graph_arrays(obs, scenario, node_faults)
    for k in MASK_KEYS:
        g[k] = obs[k]
    g["node_id"] = obs["node_id"]
    return g


def _hint_maker(name: str, scenario: Scenario):
    """The heuristic whose proposals are the hints (`ModelConfig.hint_policy`): greedy, or another
    registered heuristic that acts on observations alone (e.g. edgeflow, whose starts a network can
    copy on cloud-edge). A planner (rollout) or a learned policy cannot be one."""
    if name == "greedy":
        return GreedyPolicy(scenario)
    from agents.registry import make_policy, policy_class

    cls = policy_class(name)
    if cls.learned or hasattr(cls, "observe_present"):
        raise ValueError(f"hint policy {name!r} is not a heuristic that acts on observations alone. Fix: use greedy "
                         f"or a heuristic such as edgeflow, elasticflow, sjf")
    return make_policy(name, scenario)


# --------------------------------------------------------------------------- what scores choices
@dataclass
class Choices:
    """A scorer's answer for S deciding agents (row j is agents[j] of the call)."""

    place: np.ndarray  # [S] window place started, -1 = none
    node: np.ndarray  # [S] local node
    alloc: np.ndarray  # [S, R]
    task_prob: np.ndarray  # [S] probability of the chosen task choice (conflict posteriors)
    # eager training path only (None from an exported program): for PPO's RoundRecord
    logp_task: np.ndarray | None = None  # [S]
    logp_rest: np.ndarray | None = None  # [S]
    value: np.ndarray | None = None  # [S] the critic's value of each agent
    decline: np.ndarray | None = None  # [S] window place declined, -1 = none (None: a scorer without declines)


class RoundScorer(Protocol):
    def score(self, agents: np.ndarray, masks: dict[str, np.ndarray]) -> Choices:
        """One (task, node, allocation) choice per agent; masks[k] is [S, ...], one row per agent."""


@dataclass
class ScoreRequest:
    """What a round's planning asks a scorer for: choices of `agents` (global agent indices) under
    `masks` (one row per agent), in the round described by `arrays` (the same object for every
    request of one round, so a driver encodes a round once)."""

    arrays: dict[str, np.ndarray]
    agents: np.ndarray
    masks: dict[str, np.ndarray]


# The planning of one round as a coroutine: it yields requests, is sent their Choices, and returns
# the round's (actions, record). One driver serves one episode (`RoundPlanner.plan_round`); the
# batched collector serves many episodes' requests with one forward pass (agents.learned.vector).
PlanSteps = Generator[ScoreRequest, Choices, "tuple[RoundActions, RoundRecord]"]


class Scorer(Protocol):
    def for_round(self, arrays: dict[str, np.ndarray]) -> RoundScorer:
        """Prepare a round (`round_arrays`): scored once or more, with other masks, in that round."""


# --------------------------------------------------------------------------- the round loop
class RoundPlanner:
    """The learned policy's round logic around a `Scorer`; holds the current slot's plans."""

    def __init__(self, scenario: Scenario, options: ActingOptions | None = None, record_arrays: bool = True,
                 greedy_hint: bool = False, decline: bool = False, hint_policy: str = "greedy",
                 node_faults: bool = False):
        """`record_arrays`: keep every round's graph arrays in its `RoundRecord` (what PPO learns
        from); False builds them only for rounds in which some agent decides (a runtime that keeps
        no records, e.g. the exported policy, saves the work in the other rounds). `greedy_hint`:
        add greedy's proposals to the arrays (a network with `ModelConfig.greedy_hint` needs them).
        `decline`: offer the decline choices (a network with `ModelConfig.decline` scores them).
        `node_faults`: graph arrays with the node-health columns (`ModelConfig.node_faults`)."""
        if decline and not scenario.allow_decline:
            raise ValueError(f"this policy declines tasks (admission control), but scenario '{scenario.name}' does "
                             f"not allow declining (allow_decline = false). Fix: run it on the scenario it was "
                             f"trained on (one with allow_decline = true), or use a policy trained without declines.")
        self.decline = decline
        self.node_faults = node_faults
        self.scenario = scenario
        self.options = options or ActingOptions()
        self.record_arrays = record_arrays
        self.static = static_tables(scenario)
        self.greedy = _hint_maker(hint_policy, scenario) if greedy_hint else None
        self.reset()

    def reset(self) -> None:
        self.queue: list[list[Step]] = [[] for _ in range(self.scenario.num_clusters)]
        self.slot = -1
        if self.greedy is not None:
            self.greedy.reset(0)  # the hint heuristics draw nothing at random: the seed is unused
        self._hinted: tuple[dict | None, dict[str, np.ndarray]] = (None, {})

    def hints(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Greedy's proposals for this round's observations (`HINT_KEYS`; {} without hints). Call
        it for every round of the episode, in order: `plan_steps` does, and so must a driver that
        plays some rounds without the planner (a teacher's rounds: `round_arrays` below). The same
        observations object asked again gets the same answer without greedy acting twice."""
        if self.greedy is None:
            return {}
        if self._hinted[0] is not obs:
            self._hinted = (obs, hint_arrays(self.greedy.act(obs), obs["task_mask"].shape[1] - 1))
        return self._hinted[1]

    def round_arrays(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """`round_arrays` of this round, with the greedy hints when the planner makes them."""
        return {**round_arrays(obs, self.scenario, self.node_faults), **self.hints(obs)}

    def plan_round(self, obs: dict[str, np.ndarray], scorer: Scorer) -> tuple[RoundActions, RoundRecord]:
        """This round's actions of all agents, and what was decided (for PPO)."""
        steps = self.plan_steps(obs)
        round_scorer = None
        try:
            request = next(steps)
            while True:
                if round_scorer is None:
                    round_scorer = scorer.for_round(request.arrays)
                request = steps.send(round_scorer.score(request.agents, request.masks))
        except StopIteration as finished:
            return finished.value

    def plan_steps(self, obs: dict[str, np.ndarray]) -> PlanSteps:
        """`plan_round` as a coroutine: yields `ScoreRequest`s, is sent their `Choices`."""
        N = obs["task_mask"].shape[0]
        self.hints(obs)  # every round, also when nobody decides: greedy remembers what it saw
        slot = int(obs["slot"][0, 0])
        if slot != self.slot:
            self.queue = [[] for _ in range(N)]
            self.slot = slot
        # agents with a plan play its next still playable step; the others decide now, also those
        # whose planned steps have all become unplayable (a stale plan costs no turn: a round in
        # which nobody starts ends the slot)
        starts: list[Step | None] = [None] * N
        for i in range(N):
            while self.queue[i] and starts[i] is None:
                step = self.queue[i].pop(0)
                if step_still_valid(obs, i, step.place, step.node, step.alloc, step.task_id, step.decline):
                    starts[i] = step
        able = can_decide(obs, self.decline)
        fresh = [i for i in range(N) if starts[i] is None and able[i]]
        arrays = self.round_arrays(obs) if fresh or self.record_arrays else {}
        record = RoundRecord(arrays)
        if fresh:
            record.decisions = yield from self._decide(obs, arrays, fresh)
            for d in record.decisions:
                real = [s for s in d.steps if s.place >= 0]
                if real:
                    starts[d.agent] = real[0]
                    self.queue[d.agent] = real[1:]
        keep = self._resolve_conflicts(obs, starts)
        for d in record.decisions:
            first = starts[d.agent]
            if first is not None and not keep[d.agent] and first is d.steps[0]:
                d.lost_conflict = True
        actions = RoundActions.nothing(N, obs["alloc_low"].shape[2])
        for i, s in enumerate(starts):
            if s is not None and keep[i]:
                if s.decline:
                    actions.decline_place(i, s.place)
                else:
                    actions.task[i], actions.node[i], actions.alloc[i] = s.place, s.node, s.alloc
        return actions, record

    def _decide(self, obs: dict[str, np.ndarray], arrays: dict[str, np.ndarray], fresh: list[int]
                ) -> Generator[ScoreRequest, Choices, list[AgentDecision]]:
        """The decisions of the `fresh` agents: one choice each, or a sequence in multi-task mode.
        Step k scores the agents whose sequence goes on, with their masks after steps 0..k-1."""
        rows = np.asarray(fresh, dtype=np.int64)
        n_steps = self.options.max_sequence if self.options.multi_task else 1
        stacked = decision_masks(obs, rows, self.decline)  # copies: edits stay local
        # Liveness: an idle cluster with a startable task may not pass (a decline is allowed).
        # Waiting there never frees anything, and an untrained (or greedy) policy could otherwise
        # stall forever. Agents that may only decline may pass.
        idle = ~(obs["running_id"][rows] >= 0).any(axis=1) & obs["task_mask"][rows, 1:].any(axis=1)
        stacked["task_mask"][idle, 0] = 0
        masks = [{k: stacked[k][j] for k in MASK_KEYS} for j in range(len(fresh))]
        if n_steps > 1:
            free = [obs["node_free"][i].copy() for i in fresh]
            occupied = [obs["window_id"][i] >= 0 for i in fresh]
            room = [int(self.static.max_running[i] - (obs["running_id"][i] >= 0).sum()) for i in fresh]
        decisions = [AgentDecision(i, [], 0.0) for i in fresh]
        active = np.ones(len(fresh), dtype=bool)
        for k_step in range(n_steps):
            idx = np.flatnonzero(active)
            if not idx.size:
                break
            batch = stacked if k_step == 0 else {k: np.stack([masks[j][k] for j in idx]) for k in MASK_KEYS}
            c = yield ScoreRequest(arrays, rows[idx], batch)
            if k_step == 0 and c.value is not None:
                for j in idx:
                    decisions[j].value = float(c.value[j])
            for k, j in enumerate(idx):
                p = int(c.place[k])
                dp = -1 if c.decline is None else int(c.decline[k])
                if dp >= 0:  # a decline: no node, no allocation (recorded as 0, unused)
                    decisions[j].steps.append(Step(
                        masks[j], dp, 0, np.zeros(c.alloc.shape[1], dtype=np.int64),
                        int(obs["window_id"][fresh[j], dp]), float(c.task_prob[k]),
                        0.0 if c.logp_task is None else float(c.logp_task[k]), 0.0, decline=True))
                    active[j] = False  # a decline ends the sequence
                    continue
                tid = int(obs["window_id"][fresh[j], p]) if p >= 0 else -1
                decisions[j].steps.append(Step(
                    masks[j], p, int(c.node[k]), c.alloc[k].astype(np.int64), tid, float(c.task_prob[k]),
                    0.0 if c.logp_task is None else float(c.logp_task[k]),
                    0.0 if c.logp_rest is None else float(c.logp_rest[k])))
                if p < 0 or n_steps == 1:
                    active[j] = False
                    continue
                room[j] -= 1
                masks[j] = update_masks(masks[j], free[j], p, int(c.node[k]), c.alloc[k], self.static.grid_max,
                                        occupied[j], room[j])
                # the liveness rule asked for the first start only: "do nothing" is allowed again
                masks[j]["task_mask"][0] = obs["task_mask"][fresh[j], 0]
                if not masks[j]["task_mask"][1:].any():
                    active[j] = False  # nothing left to choose: the sequence ends without a "none" step
        return decisions

    def _resolve_conflicts(self, obs: dict[str, np.ndarray], starts: list[Step | None]) -> np.ndarray:
        """Which agents keep their start: all of them, unless several start the same task."""
        task_ids = np.array([s.task_id if s is not None else -1 for s in starts])
        taken = task_ids[task_ids >= 0]
        if np.unique(taken).size == taken.size:
            return task_ids >= 0
        probs = np.array([s.prob if s is not None else 0.0 for s in starts])
        fits = np.zeros(len(starts))  # the prior's fit counts (they only matter between rivals)
        for i, s in enumerate(starts):
            if s is not None:
                tmin = self.static.type_min[obs["window_type"][i, s.place]]
                fits[i] = fit_count(obs["node_free"][i], obs["node_id"][i] >= 0, tmin)
        return resolve(task_ids, probs, fits, bayes=self.options.bayes)
