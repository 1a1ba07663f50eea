"""`rollout`: multi-agent rollout (Bertsekas) with `greedy` as the base policy — a policy
improvement operator, and the teacher of the learned policy's expert iteration.

Each round, `greedy` proposes every agent's action (its plan). Then the agents that can start a
task decide ONE AT A TIME, in index order: agent i scores a few candidate actions, each by
simulating the system forward — this round with the agents before i playing what they chose, i
playing the candidate and the agents after i playing greedy's proposal; then greedy for every
agent in every later round — and takes the cheapest. Agent i+1 decides knowing i's choice.

* **Cost** of a simulation: the tasks in the system summed over its slot ends (the team reward,
  whose sum over an episode is the total completion time). Futures are truncated at `horizon`
  slots: no task arrives after that in the simulation, and greedy plays on until the tasks in the
  system have finished (at most `drain` more slots): the base policy's cost to clear what the
  horizon leaves, so a wait that pays off later is still seen.
* **Futures** come from the scenario's arrival model (`agents.heuristics.futures`), never from
  the episode's own future: `futures` of them per round, the same for every candidate (common
  random numbers, so candidates are compared on equal futures).
* **State**: what a central scheduler knows now (`observe_present`): the tasks that have arrived,
  with their progress, places and estimated work (`envs.episode.present_view`: no future arrival
  and no hidden truth reaches the policy).
* **Candidates** (at most `candidates`): greedy's proposal; waiting; greedy's task with its
  fastest allocation that fits now and with its minimum; the other startable tasks at their
  fastest start (shortest run first). A candidate replaces greedy's proposal only if it is
  cheaper on EVERY sampled future (then the cheapest such on average): the minimum of a few noisy
  estimates would otherwise trade greedy's choice for noise. With exact cost-to-go this is the
  rollout property (no worse than the base policy); with sampled, truncated futures it is an
  approximation, and measured as one (README).

Defaults: `horizon=8`, `drain=24`, `futures=2`, `candidates=4`. Cost per decision grows with
candidates × futures × (horizon + drain) slots of greedy: `rollout` is slow by design (see the
README's table of decisions per second); the learned policy distils it.
"""

from __future__ import annotations

import copy

import numpy as np

from agents.base import Policy
from agents.heuristics.estimates import SpeedModel, fastest_start
from agents.heuristics.futures import FutureSampler
from agents.heuristics.greedy import GreedyPolicy
from envs.actions import RoundActions
from envs.observations import build_observations
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import Scenario

Choice = tuple[int, int, tuple[int, ...]]  # (window place or -1, local node, allocation)


class RolloutPolicy(Policy):
    """Multi-agent rollout over `greedy`; see the module docstring."""

    name = "rollout"

    def __init__(self, scenario: Scenario, seed: int = 0, horizon: int = 8, drain: int = 24, futures: int = 2,
                 candidates: int = 4):
        super().__init__(scenario, seed)
        if horizon < 1 or drain < 0 or futures < 1 or candidates < 1:
            raise ValueError(f"rollout: horizon >= 1, drain >= 0, futures >= 1 and candidates >= 1 are needed, got "
                             f"horizon={horizon}, drain={drain}, futures={futures}, candidates={candidates}")
        self.horizon, self.drain, self.futures, self.candidates = horizon, drain, futures, candidates
        self.base = GreedyPolicy(scenario, seed)
        self.model: SpeedModel = self.base.model
        self.sampler = FutureSampler(scenario)
        self.present: Engine | None = None
        self.simulated_slots = 0  # work done, for the benchmark's numbers

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self.base.reset(seed)
        self.present = None

    def observe_present(self, present: Engine) -> None:
        """The system as a central scheduler knows it this round (called before `act`)."""
        self.present = present

    # ------------------------------------------------------------------ one round
    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        proposal = self.base.act(obs)
        deciding = [i for i in range(proposal.task.size) if obs["task_mask"][i, 1:].any()]
        if not deciding:
            return proposal
        if self.present is None:
            raise RuntimeError("rollout needs the present state each round: drive it with envs.episode.run_episode "
                               "(or call observe_present(envs.episode.present_view(engine)) before act)")
        present, self.present = self.present, None
        futures = [self.sampler.sample(present.slot, present.next_arrival, self.rng, self.horizon)
                   for _ in range(self.futures)]
        chosen = copy.deepcopy(proposal)
        chosen_cost: np.ndarray | None = None  # per future, cost of `chosen` as it stands (agents after i on greedy)
        for i in deciding:
            options = self._candidates(obs, i, proposal)
            if len(options) < 2:
                continue
            costs = []
            for k, option in enumerate(options):
                if k == 0 and chosen_cost is not None:
                    costs.append(chosen_cost)  # greedy's proposal for i: the profile just simulated
                    continue
                trial = _with_choice(chosen, i, option)
                costs.append(np.array([self._simulate(present.fork(f), trial) for f in futures]))
            best = _pick(costs)
            chosen = _with_choice(chosen, i, options[best])
            chosen_cost = costs[best]
        return chosen

    def _candidates(self, obs: dict[str, np.ndarray], i: int, proposal: RoundActions) -> list[Choice]:
        """Agent i's candidate actions, greedy's proposal first, without repeats."""
        out: list[Choice] = [_choice_of(proposal, i)]

        def add(choice: Choice) -> None:
            if choice not in out and len(out) < self.candidates:
                out.append(choice)

        R = proposal.alloc.shape[1]
        add((-1, 0, (0,) * R))
        p = int(proposal.task[i])
        if p >= 0:
            node = int(proposal.node[i])
            k, work = int(obs["window_type"][i, p]), float(obs["window_work"][i, p])
            fast = self.model.fastest_fit(k, obs["alloc_high"][i, node], work)
            if fast is not None:
                add((p, node, tuple(int(a) for a in fast.alloc)))
            add((p, node, tuple(int(a) for a in obs["alloc_low"][i, p])))
        starts = []
        for q in np.flatnonzero(obs["task_mask"][i, 1:]):
            found = fastest_start(self.model, obs, i, int(q))
            if found is not None and int(q) != p:
                starts.append((found[1].slots, int(q), found[0], tuple(int(a) for a in found[1].alloc)))
        for _, q, node, alloc in sorted(starts):
            add((q, node, alloc))
        return out

    def _simulate(self, engine: Engine, first: RoundActions) -> float:
        """Cost of playing `first`, then greedy, on a fork: tasks in the system summed over slot ends
        (futures end at the horizon; then at most `drain` slots to clear the system)."""
        base = copy.copy(self.base)
        base.work = dict(self.base.work)  # its memory of the tasks' work, private to this simulation
        cost, slots, limit = 0.0, 0, self.horizon + self.drain
        act = first
        while True:
            in_system = engine.next_arrival - engine.finished_count
            if act.play(engine):
                cost += in_system
                slots += 1
                if engine.done or slots >= limit:
                    break
            act = base.act(build_observations(engine))
        self.simulated_slots += slots
        # what the drain did not clear still waits at least a slot each
        return cost + float(engine.next_arrival - engine.finished_count)


def _pick(costs: list[np.ndarray]) -> int:
    """The candidate to take: the cheapest on average among those cheaper than greedy's proposal
    (index 0) on EVERY sampled future; the proposal when none is. The minimum of a few noisy means
    would favour a deviation by chance alone (the winner's curse); asking a candidate to win on
    each future keeps the rollout from trading greedy's choice for noise."""
    base = costs[0]
    better = [k for k in range(1, len(costs)) if np.all(costs[k] < base)]
    return min(better, key=lambda k: (float(costs[k].mean()), k)) if better else 0


def _choice_of(actions: RoundActions, i: int) -> Choice:
    if actions.task[i] < 0:
        return (-1, 0, (0,) * actions.alloc.shape[1])
    return (int(actions.task[i]), int(actions.node[i]), tuple(int(a) for a in actions.alloc[i]))


def _with_choice(actions: RoundActions, i: int, choice: Choice) -> RoundActions:
    out = RoundActions(actions.task.copy(), actions.node.copy(), actions.alloc.copy(),
                       None if actions.realloc is None else actions.realloc.copy())
    out.task[i], out.node[i], out.alloc[i] = choice[0], choice[1], np.asarray(choice[2], dtype=np.int64)
    return out
