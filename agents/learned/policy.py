"""Acting with the network: one forward pass per round for all agents, Bayes conflict resolution,
and single- or multi-task scheduling.

In multi-task mode an agent emits a sequence of (task, node, allocation) choices in one
decision, with its masks updated after each choice (the chosen task removed, the node's free
resources reduced). The environment starts one task per agent per round, so the rest of the
sequence is played in the following rounds of the same slot (dropped if a step has become
infeasible, e.g. another cluster started that task).

Liveness rule: a cluster that runs nothing and has a startable task must start one (its "do
nothing" choice is masked), so no policy can stall an episode forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from agents.base import Policy
from envs.actions import RoundActions
from agents.learned.acting import ActingOptions
from agents.learned.actor import decide
from agents.learned.batch import collate, round_arrays
from agents.learned.conflicts import fit_count, resolve
from agents.learned.masks import MASK_KEYS, step_still_valid, update_masks
from agents.learned.model import TapFingerNet
from tapfinger.sim.tables import static_tables
from tapfinger.sim.scenario import Scenario



@dataclass
class Step:
    masks: dict[str, np.ndarray]  # this agent's masks when the choice was made
    place: int
    node: int
    alloc: np.ndarray
    task_id: int
    prob: float  # probability with which the task was picked (for conflict posteriors)
    logp_task: float = 0.0
    logp_rest: float = 0.0  # node + allocation


@dataclass
class AgentDecision:
    """A decision of one agent in one round: what PPO learns from."""

    agent: int
    steps: list[Step]
    value: float
    lost_conflict: bool = False


@dataclass
class RoundRecord:
    arrays: dict[str, np.ndarray]
    decisions: list[AgentDecision] = field(default_factory=list)


class Planner:
    """Turns batched observations into RoundActions with the network."""

    def __init__(self, net: TapFingerNet, scenario: Scenario, options: ActingOptions | None = None,
                 device: str | torch.device = "cpu"):
        self.net = net
        self.scenario = scenario
        self.options = options or ActingOptions()
        self.static = static_tables(scenario)
        self.grid = self.static.grid_max
        self.device = torch.device(device)
        self.queue: list[list[Step]] = [[] for _ in range(scenario.num_clusters)]
        self.slot = -1

    def reset(self) -> None:
        self.queue = [[] for _ in range(self.scenario.num_clusters)]
        self.slot = -1

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = False,
            generator: torch.Generator | None = None) -> tuple[RoundActions, RoundRecord]:
        N = obs["task_mask"].shape[0]
        R = obs["alloc_low"].shape[2]
        slot = int(obs["slot"][0, 0])
        if slot != self.slot:  # plans are made for one slot
            self.queue = [[] for _ in range(N)]
            self.slot = slot
        arrays = round_arrays(obs, self.scenario)
        record = RoundRecord(arrays)
        starts: list[Step | None] = [None] * N
        fresh = [i for i in range(N) if not self.queue[i] and obs["task_mask"][i, 1:].any()]
        for i in range(N):
            while self.queue[i] and starts[i] is None:
                step = self.queue[i].pop(0)
                if step_still_valid(obs, i, step.place, step.node, step.alloc, step.task_id):
                    starts[i] = step
        if fresh:
            batch = collate([arrays]).to(self.device)
            h = self.net.encode(batch)
            values = self.net.values(h).cpu().numpy()
            rows = torch.as_tensor(fresh, device=self.device)
            seqs = self._sample_sequences(h, batch, rows, obs, fresh, deterministic, generator)
            for i, steps in zip(fresh, seqs):
                record.decisions.append(AgentDecision(i, steps, float(values[i])))
                real = [s for s in steps if s.place >= 0]
                if real:
                    starts[i] = real[0]
                    self.queue[i] = real[1:]
        # conflicts: several agents starting the same task this round
        task_ids = np.array([s.task_id if s is not None else -1 for s in starts])
        probs = np.array([s.prob if s is not None else 0.0 for s in starts])
        fits = np.zeros(N)
        for i, s in enumerate(starts):
            if s is not None:
                tmin = self.static.type_min[obs["window_type"][i, s.place]]
                fits[i] = fit_count(obs["node_free"][i], obs["node_id"][i] >= 0, tmin)
        keep = resolve(task_ids, probs, fits, bayes=self.options.bayes)
        for d in record.decisions:
            first = starts[d.agent]
            if first is not None and not keep[d.agent] and d.steps and first is d.steps[0]:
                d.lost_conflict = True
        actions = RoundActions.nothing(N, R)
        for i, s in enumerate(starts):
            if s is not None and keep[i]:
                actions.task[i], actions.node[i], actions.alloc[i] = s.place, s.node, s.alloc
        return actions, record

    def _sample_sequences(self, h, batch, rows, obs, fresh, deterministic, generator):
        n_steps = self.options.max_sequence if self.options.multi_task else 1
        masks = [{k: obs[k][i].copy() for k in MASK_KEYS} for i in fresh]
        for j, i in enumerate(fresh):
            if not (obs["running_id"][i] >= 0).any():
                # Liveness: an idle cluster with a startable task may not pass. Waiting there never
                # frees anything, and an untrained (or argmax) policy could otherwise stall forever.
                masks[j]["task_mask"][0] = 0
        free = [obs["node_free"][i].copy() for i in fresh]
        occupied = [obs["window_id"][i] >= 0 for i in fresh]
        room = [int(self.static.max_running[i] - (obs["running_id"][i] >= 0).sum()) for i in fresh]
        steps: list[list[Step]] = [[] for _ in fresh]
        active = np.ones(len(fresh), dtype=bool)
        for _ in range(n_steps):
            idx = np.flatnonzero(active)
            if not idx.size:
                break
            m = {k: torch.as_tensor(np.stack([masks[j][k] for j in idx]), device=self.device) for k in MASK_KEYS}
            m["task_mask"] = m["task_mask"].bool()
            m["node_mask"] = m["node_mask"].bool()
            d = decide(self.net, h, batch, rows[torch.as_tensor(idx, device=self.device)], m,
                       deterministic=deterministic, generator=generator, pointer=self.options.pointer)
            place, node, alloc = d.place.cpu().numpy(), d.node.cpu().numpy(), d.alloc.cpu().numpy()
            lp_task, lp_rest = d.logp_task.cpu().numpy(), d.logp_rest.cpu().numpy()
            probs = d.task_probs.cpu().numpy()
            for k, j in enumerate(idx):
                i = fresh[j]
                p = int(place[k])
                tid = int(obs["window_id"][i, p]) if p >= 0 else -1
                steps[j].append(Step(masks[j], p, int(node[k]), alloc[k].astype(np.int64), tid,
                                     float(probs[k, p + 1]), float(lp_task[k]), float(lp_rest[k])))
                if p < 0:
                    active[j] = False
                    continue
                room[j] -= 1
                masks[j] = update_masks(masks[j], free[j], p, int(node[k]), alloc[k], self.grid, occupied[j], room[j])
                if not masks[j]["task_mask"][1:].any():
                    active[j] = False  # nothing left to choose: the sequence ends without a "none" step
        return steps


class LearnedPolicy(Policy):
    """The trained TapFinger policy, loaded from a checkpoint (greedy actions by default)."""

    name = "tapfinger"
    learned = True

    def __init__(self, scenario: Scenario, seed: int = 0, checkpoint: str | None = None,
                 deterministic: bool = True, device: str = "cpu", options: ActingOptions | None = None,
                 **overrides):
        super().__init__(scenario, seed)
        from agents.learned.checkpoint import load_checkpoint

        if checkpoint is None:
            raise ValueError("the tapfinger policy needs a checkpoint (--checkpoint PATH)")
        ckpt = load_checkpoint(checkpoint, scenario)
        self.net = ckpt.net.to(device).eval()
        opts = options or ActingOptions(**ckpt.acting)
        for k, v in overrides.items():
            setattr(opts, k, v)
        self.planner = Planner(self.net, scenario, opts, device=device)
        self.deterministic = deterministic
        self.generator = torch.Generator(device=device)

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self.planner.reset()
        self.generator.manual_seed(int(seed) + 0x7F)

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        actions, _ = self.planner.act(obs, deterministic=self.deterministic, generator=self.generator)
        return actions
