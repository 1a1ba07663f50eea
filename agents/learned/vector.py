"""Scoring the requests of many episodes at once: the batched half of lockstep collection.

All the rounds that need the network in one lockstep step are collated into one disjoint graph
and encoded once; then every request (one per episode; multi-task sequences make several per
round) is served by one pass of the actor heads over all their agents. Rows of agent `a` of the
round at batch position `k` are `k * N + a` (`agents.learned.batch.collate` stacks N agents per
round). Uniforms are drawn per request from that episode's generator, in the order a lone
`TorchScorer` would draw them, so the batch composition never changes an episode.
"""

from __future__ import annotations

import numpy as np
import torch

from agents.learned.acting import Choices, ScoreRequest
from agents.learned.batch import collate
from agents.learned.masks import MASK_KEYS
from agents.learned.model import TapFingerNet
from agents.learned.policy import draw_uniforms, needs_uniforms, score_rows


class LockstepScorer:
    def __init__(self, net: TapFingerNet, device: torch.device, pointer: bool = True):
        on = next(net.parameters()).device
        if on.type != device.type or (device.index is not None and on != device):
            raise ValueError(f"collection on {device} with a network on {on}. Fix: move the network there "
                             f"(net.to('{device}')) or collect on {on}.")
        self.net, self.device, self.pointer = net, device, pointer
        self.batch = None
        self.h = None
        self.num_agents = 0

    def encode(self, rounds: list[dict[str, np.ndarray]]) -> None:
        """Encode the rounds of this lockstep step (position k = rounds[k])."""
        self.batch = collate(rounds).to(self.device)
        self.h = self.net.encode(self.batch)
        self.num_agents = rounds[0]["cluster_x"].shape[0]

    def score(self, requests: list[tuple[int, ScoreRequest, np.random.Generator]],
              deterministic: bool = False) -> list[Choices]:
        """Choices for each (batch position, request, that episode's generator): sampled, or the
        greedy ones when `deterministic` (then only the no-pointer ablation draws)."""
        R = len(self.net.cfg.grid_max)
        rows = np.concatenate([k * self.num_agents + req.agents for k, req, _ in requests])
        masks = {key: np.concatenate([req.masks[key] for _, req, _ in requests]) for key in MASK_KEYS}
        uniforms = np.concatenate([draw_uniforms(rng, len(req.agents), R) for _, req, rng in requests]) \
            if needs_uniforms(deterministic, self.pointer) else None
        c = score_rows(self.net, self.h, self.batch, rows, masks, uniforms, self.device, self.pointer, deterministic)
        out, start = [], 0
        for _, req, _ in requests:
            sl = slice(start, start + len(req.agents))
            out.append(Choices(c.place[sl], c.node[sl], c.alloc[sl], c.task_prob[sl], c.logp_task[sl],
                               c.logp_rest[sl], decline=None if c.decline is None else c.decline[sl]))
            start = sl.stop
        return out
