"""Acting with the network: the torch scorer of the shared round loop, and the registry's policy.

The round logic (plans, liveness rule, multi-task sequences, conflict resolution) is
`agents.learned.acting.RoundPlanner`, shared with the exported-policy runtime; this module only
supplies what scores a batch of deciding agents with the eager network: one forward pass of the
encoder per round (reused by every choice of that round's sequences), then `actor.decide`.
Sampled choices draw their uniforms from a numpy generator (`actor.uniform_columns` per agent, in
the order of the request's agents): the batched collector (agents.learned.vector) draws the same
ones, so both give the same episodes.
"""

from __future__ import annotations

import numpy as np
import torch

from agents.base import Policy
from agents.learned.acting import (ActingOptions, AgentDecision, Choices, RoundPlanner, RoundRecord, Step,
                                   round_arrays)
from agents.learned.actor import decide, uniform_columns
from agents.learned.batch import collate
from agents.learned.masks import MASK_KEYS
from agents.learned.model import TapFingerNet
from envs.actions import RoundActions
from tapfinger.sim.scenario import Scenario

# the names the training code (collect.py, ppo.py) reads from here
__all__ = ["AgentDecision", "LearnedPolicy", "MASK_KEYS", "Planner", "RoundRecord", "Step", "TorchScorer",
           "round_arrays"]


def draw_uniforms(rng: np.random.Generator | None, rows: int, num_resources: int) -> np.ndarray | None:
    """Uniforms in (0, 1] for `rows` sampled decisions (None: deterministic choices draw nothing)."""
    if rng is None:
        return None
    return 1.0 - rng.random((rows, uniform_columns(num_resources)))


def needs_uniforms(deterministic: bool, pointer: bool) -> bool:
    """Sampled choices draw uniforms; so does the no-pointer ablation's task choice, which is
    uniform over the feasible tasks even in greedy play (an argmax of equal scores would always
    take the first)."""
    return not deterministic or not pointer


def score_rows(net: TapFingerNet, h: dict, batch, rows: np.ndarray, masks: dict[str, np.ndarray],
               uniforms: np.ndarray | None, device: torch.device, pointer: bool, deterministic: bool) -> Choices:
    """The actor heads for `rows` of an encoded batch."""
    m = {k: torch.as_tensor(masks[k], device=device) for k in MASK_KEYS}
    m["task_mask"] = m["task_mask"].bool()
    m["node_mask"] = m["node_mask"].bool()
    r = torch.as_tensor(rows, device=device)
    u = None if uniforms is None else torch.as_tensor(uniforms, device=device)
    d = decide(net, h, batch, r, m, deterministic=deterministic, uniforms=u, pointer=pointer)
    prob = d.task_probs[torch.arange(r.shape[0], device=device), d.choice]  # "none" is choice 0
    return Choices(d.place.cpu().numpy(), d.node.cpu().numpy(), d.alloc.cpu().numpy(), prob.cpu().numpy(),
                   d.logp_task.cpu().numpy(), d.logp_rest.cpu().numpy(),
                   decline=None if d.decline is None else d.decline.cpu().numpy())


class _TorchRound:
    """One round encoded once; `score` runs the actor heads for a batch of agents."""

    def __init__(self, scorer: "TorchScorer", arrays: dict[str, np.ndarray]):
        self.s = scorer
        self.batch = collate([arrays]).to(scorer.device)
        self.h = scorer.net.encode(self.batch)

    def score(self, agents: np.ndarray, masks: dict[str, np.ndarray]) -> Choices:
        s = self.s
        u = draw_uniforms(s.rng, len(agents), len(s.net.cfg.grid_max)) \
            if needs_uniforms(s.deterministic, s.pointer) else None
        return score_rows(s.net, self.h, self.batch, agents, masks, u, s.device, s.pointer, s.deterministic)


class TorchScorer:
    """Scores with the eager network: sampled choices (uniforms from `rng`), or greedy ones when
    `deterministic`. Values are not computed while acting: PPO evaluates its critic on the stored
    rounds in its update (agents.learned.ppo)."""

    def __init__(self, net: TapFingerNet, device: torch.device, deterministic: bool = False,
                 rng: np.random.Generator | None = None, pointer: bool = True):
        if needs_uniforms(deterministic, pointer) and rng is None:
            raise ValueError("sampled choices (and the no-pointer ablation) need a numpy generator (rng)")
        self.net, self.device = net, device
        self.deterministic, self.rng, self.pointer = deterministic, rng, pointer

    def for_round(self, arrays: dict[str, np.ndarray]) -> _TorchRound:
        return _TorchRound(self, arrays)


class Planner(RoundPlanner):
    """Turns batched observations into RoundActions with the network."""

    def __init__(self, net: TapFingerNet, scenario: Scenario, options: ActingOptions | None = None,
                 device: str | torch.device = "cpu"):
        super().__init__(scenario, options, greedy_hint=net.cfg.greedy_hint, decline=net.cfg.decline,
                         hint_policy=net.cfg.hint_policy, node_faults=net.cfg.node_faults)
        self.net = net
        self.device = torch.device(device)

    @torch.no_grad()
    def act(self, obs: dict[str, np.ndarray], deterministic: bool = False,
            rng: np.random.Generator | None = None) -> tuple[RoundActions, RoundRecord]:
        scorer = TorchScorer(self.net, self.device, deterministic, rng, self.options.pointer)
        return self.plan_round(obs, scorer)


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
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int) -> None:
        super().reset(seed)
        self.planner.reset()
        self.rng = np.random.default_rng(int(seed) + 0x7F)

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        actions, _ = self.planner.act(obs, deterministic=self.deterministic, rng=self.rng)
        return actions
