"""Sampling (or scoring) decisions with the actor heads: task first, then node, then each resource.

The same function serves acting (actions=None: sample, or the greedy pick when deterministic)
and the PPO update (actions given: their log-probabilities and entropies under the current weights).
The greedy pick breaks near-ties by the lowest index (`agents.learned.ties`); the exported program
runs this same code, so it carries the same rule.

Sampling is by inverse CDF from uniforms the caller supplies, one row per decision and one column
per head (`uniform_columns`): each environment draws them from its own numpy generator, so an
episode's samples do not depend on which other episodes share its batched forward pass (batched
and one-at-a-time collection give the same episodes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.learned.batch import GraphBatch
from agents.learned.model import TapFingerNet
from agents.learned.ties import LOGIT_ATOL


@dataclass
class Decision:
    place: torch.Tensor  # [S] window place started, -1 = none (do nothing, or a decline)
    node: torch.Tensor  # [S]
    alloc: torch.Tensor  # [S, R]
    logp_task: torch.Tensor  # [S]
    logp_rest: torch.Tensor  # [S] node + allocation (0 when doing nothing or declining)
    entropy: torch.Tensor  # [S] all heads together (node and allocation only when starting a task)
    task_probs: torch.Tensor  # [S, W+1] ([S, 2W+1] for a network with decline)
    task_logits: torch.Tensor | None = None  # masked, as task_probs; an output of the exported program
    head_entropy: dict[str, torch.Tensor] | None = None  # [S] per head: task, node, alloc (all resources)
    decline: torch.Tensor | None = None  # [S] window place declined, -1 = none (None: nobody declines)
    choice: torch.Tensor | None = None  # [S] index of the task choice taken (column of task_probs)


def choice_index(place: torch.Tensor, decline: torch.Tensor | None, window: int) -> torch.Tensor:
    """The task choice of (place started, place declined): 0 = do nothing, 1..W = start place i-1,
    W+1..2W = decline place i-W-1 (`ModelConfig.decline`)."""
    start = place + 1
    if decline is None:
        return start
    return torch.where(decline >= 0, decline + window + 1, start)


def uniform_columns(num_resources: int) -> int:
    """Uniforms one sampled decision consumes: task, node, then one per resource."""
    return 2 + num_resources


def greedy_pick(logits: torch.Tensor, atol: float = LOGIT_ATOL) -> torch.Tensor:
    """The lowest index whose logit is within `atol` of the row's maximum. argmax of the 0/1 "near
    the maximum" indicator: torch.argmax and ONNX ArgMax both return the first maximal index, so
    the eager model, the .pt2 and the ONNX program pick the same one of near-equal twins."""
    best = logits.max(dim=-1, keepdim=True).values
    return (logits >= best - atol).to(logits.dtype).argmax(dim=-1)


def sample_pick(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sample of each row with its uniform u in (0, 1]: the first index whose
    cumulative probability reaches u times the row's total (masked entries have probability 0, so
    they are never reached)."""
    cdf = torch.cumsum(torch.softmax(logits, dim=-1), dim=-1)
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)
    return torch.searchsorted(cdf, target).squeeze(1).clamp(max=logits.shape[1] - 1)


def _pick(logits: torch.Tensor, given: torch.Tensor | None, deterministic: bool,
          u: torch.Tensor | None) -> torch.Tensor:
    if given is not None:
        return given
    if deterministic:
        return greedy_pick(logits)
    if u is None:
        raise ValueError("sampling needs uniforms (one column per head, see uniform_columns) or deterministic=True")
    return sample_pick(logits, u)


def _logp_entropy(logits: torch.Tensor, choice: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp_all = torch.log_softmax(logits, dim=-1)
    p = logp_all.exp()
    entropy = -(p * logp_all).sum(dim=-1)
    return logp_all.gather(1, choice.unsqueeze(1)).squeeze(1), entropy


def decide(net: TapFingerNet, h: dict, batch: GraphBatch, rows: torch.Tensor, masks: dict[str, torch.Tensor],
           given: Decision | None = None, deterministic: bool = False,
           uniforms: torch.Tensor | None = None, pointer: bool = True) -> Decision:
    """One (task, node, allocation) choice per row. `masks` holds per-row task_mask [S, W+1]
    ([S, 2W+1] with decline: the decline choices after the starts), node_mask [S, W, Nn],
    alloc_low [S, W, R], alloc_high [S, Nn, R]; `uniforms` [S, 2+R] drive sampling (unused when
    `given` or `deterministic`).

    A decline (a network with `ModelConfig.decline`) takes no node or allocation: the node and
    allocation heads still run on its row (one batch for all rows), and their log-probabilities
    and entropies are multiplied by 0 there, exactly as for "do nothing"."""
    col = (lambda j: None) if uniforms is None else (lambda j: uniforms[:, j])  # noqa: E731
    S = rows.shape[0]
    W = masks["node_mask"].shape[1]
    ar = torch.arange(S, device=rows.device)
    t_logits = net.task_logits(h, batch, rows, masks["task_mask"], pointer=pointer)
    # Without the pointer the task choice is uniform over the feasible ones: sampled even when the
    # rest of the decision is deterministic (an argmax of equal scores would always pick the first).
    t_given = None if given is None else choice_index(given.place, given.decline, W)
    t_choice = _pick(t_logits, t_given, deterministic and pointer, col(0))
    logp_task, ent_task = _logp_entropy(t_logits, t_choice)
    start = (t_choice > 0) & (t_choice <= W)
    declined = t_choice > W  # only a network with decline has these choices
    place = torch.where(declined, t_choice - W - 1, t_choice - 1).clamp(min=0)

    n_logits = net.node_logits(h, batch, rows, place, masks["node_mask"][ar, place])
    node = _pick(n_logits, None if given is None else given.node, deterministic, col(1))
    logp_node, ent_node = _logp_entropy(n_logits, node)

    z = net.alloc_context(h, batch, rows, place, node)
    low = masks["alloc_low"][ar, place]
    high = masks["alloc_high"][ar, node]
    hint = net.alloc_hint(batch, rows, place)  # greedy's amounts for its task (greedy_hint), else None
    amounts, logp_alloc, ent_alloc = [], torch.zeros(S, device=rows.device), torch.zeros(S, device=rows.device)
    for r in range(len(net.cfg.grid_max)):
        a_logits = net.alloc_logits(z, r, low[:, r], high[:, r], amounts, None if hint is None else hint[:, r])
        a = _pick(a_logits, None if given is None else given.alloc[:, r], deterministic, col(2 + r))
        lp, en = _logp_entropy(a_logits, a)
        amounts.append(a)
        logp_alloc = logp_alloc + lp
        ent_alloc = ent_alloc + en
    started = start.float()
    none = torch.full_like(place, -1)
    return Decision(
        place=torch.where(start, place, none),
        node=node, alloc=torch.stack(amounts, dim=1),
        logp_task=logp_task, logp_rest=(logp_node + logp_alloc) * started,
        entropy=ent_task + (ent_node + ent_alloc) * started,
        task_probs=torch.softmax(t_logits, dim=-1), task_logits=t_logits,
        head_entropy={"task": ent_task, "node": ent_node * started, "alloc": ent_alloc * started},
        decline=torch.where(declined, place, none) if net.cfg.decline else None, choice=t_choice)
