"""Multi-agent PPO for the TapFinger network (shared actor parameters, centralised critic), and
the behaviour-cloning update of the imitation warm start. Samples come from
`agents.learned.advantages`.

The actor's and the critic's losses are back-propagated one after the other so that the norm of
each one's gradient is measured (`grad_norm_actor`, `grad_norm_critic`): with a shared encoder the
two mix in the same parameters, and these numbers say which one drives the update. With a
separate critic (`ModelConfig.separate_critic`) the groups are disjoint and each is clipped to
`max_grad_norm` on its own, so the critic's large early gradients never shrink the actor's step.
Losers of a conflict keep their task log-probability in the loss; their node and allocation
log-probabilities are left out (those choices never took effect). A decline (`Step.decline`, a
network with `ModelConfig.decline`) is its task choice alone: `actor.decide` multiplies the node
and allocation terms of its row by 0, in collection and update alike.

A decision is all its steps (one in single-task mode, a sequence of choices in multi-task mode):
its probability is the product of the steps' probabilities, each step scored with the masks it was
chosen under (after the earlier steps of its sequence), and its entropy bonus is the sum of the
steps' entropies; `advantages.decision_logp` sums the same terms from what collection recorded, so
the ratio is exactly 1 before the first gradient step. The update scores with the acting options'
`pointer` (`ppo_update(pointer=...)`), as collection did.
"""

from __future__ import annotations

import numpy as np
import torch

from agents.learned.actor import Decision, decide
from agents.learned.advantages import Sample, ValueNorm, decision_logp  # noqa: F401 (decision_logp: tests)
from agents.learned.batch import collate
from agents.learned.collect import Episode
from agents.learned.config import PPOConfig
from agents.learned.masks import MASK_KEYS
from agents.learned.model import TapFingerNet

HEADS = ("task", "node", "alloc")


class DivergedError(RuntimeError):
    """A loss or a parameter became non-finite: the update must not be kept."""


def _minibatch_tensors(samples: list[Sample], episodes: list[Episode], device: torch.device):
    keys = sorted({(s.episode, s.round) for s in samples})
    index = {k: i for i, k in enumerate(keys)}
    batch = collate([episodes[e].rounds[r].arrays for e, r in keys]).to(device)
    n_agents = episodes[keys[0][0]].rounds[keys[0][1]].arrays["cluster_x"].shape[0]
    agent_rows = [index[(s.episode, s.round)] * n_agents + s.agent for s in samples]
    step_owner, step_rows, steps, rest_on = [], [], [], []
    for j, s in enumerate(samples):
        for k, st in enumerate(s.steps):
            step_owner.append(j)
            step_rows.append(agent_rows[j])
            steps.append(st)
            rest_on.append(0.0 if (s.lost and k == 0) else 1.0)
    masks = {k: torch.as_tensor(np.stack([st.masks[k] for st in steps]), device=device) for k in MASK_KEYS}
    masks["task_mask"] = masks["task_mask"].bool()
    masks["node_mask"] = masks["node_mask"].bool()
    # a decline step's place is the declined task's (Step.decline); Decision keeps the two apart
    given = Decision(
        place=torch.as_tensor([-1 if st.decline else st.place for st in steps], device=device),
        node=torch.as_tensor([st.node for st in steps], device=device),
        alloc=torch.as_tensor(np.stack([st.alloc for st in steps]), device=device),
        logp_task=None, logp_rest=None, entropy=None, task_probs=None,
        decline=torch.as_tensor([st.place if st.decline else -1 for st in steps], device=device))
    return (batch, torch.as_tensor(agent_rows, device=device), torch.as_tensor(step_rows, device=device),
            torch.as_tensor(step_owner, device=device), masks, given, torch.as_tensor(rest_on, device=device))


def evaluate_samples(net: TapFingerNet, samples: list[Sample], episodes: list[Episode], device: torch.device,
                     pointer: bool = True):
    """New log-probabilities, per-head entropies (summed over a decision's steps) and normalised
    values of stored decisions under the current weights."""
    batch, agent_rows, step_rows, owner, masks, given, rest_on = _minibatch_tensors(samples, episodes, device)
    h = net.encode(batch)
    values = net.values(h, batch)[agent_rows]
    d = decide(net, h, batch, step_rows, masks, given=given, pointer=pointer)
    per_step = d.logp_task + d.logp_rest * rest_on
    logp = torch.zeros(len(samples), device=device).index_add_(0, owner, per_step)
    entropy = {k: torch.zeros(len(samples), device=device).index_add_(0, owner, v)
               for k, v in d.head_entropy.items()}
    return logp, entropy, values


def _by_round(samples: list[Sample]) -> tuple[list, dict]:
    by_round: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(samples):
        by_round.setdefault((s.episode, s.round), []).append(i)
    return list(by_round), by_round


def _backward_measured(net: TapFingerNet, actor_loss: torch.Tensor | None, critic_loss: torch.Tensor,
                       max_grad_norm: float) -> tuple[float, float]:
    """Back-propagate both losses, measure each one's gradient norm, clip; (actor, critic) norms.
    `actor_loss` None: the critic alone learns (the warm-up; parameters without a gradient are
    left alone by the optimiser)."""
    params = [p for p in net.parameters() if p.requires_grad]
    if actor_loss is None:
        critic_loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_grad_norm)
        return 0.0, float(np.sqrt(sum(float((p.grad ** 2).sum()) for p in params if p.grad is not None)))
    actor_loss.backward(retain_graph=True)
    actor_grads = [p.grad.detach().clone() if p.grad is not None else None for p in params]
    critic_loss.backward()
    sq_a = sq_c = 0.0
    for p, ga in zip(params, actor_grads, strict=True):
        if p.grad is None:
            continue
        a = ga if ga is not None else torch.zeros_like(p.grad)
        sq_a += float((a ** 2).sum())
        sq_c += float(((p.grad - a) ** 2).sum())
    if net.cfg.separate_critic:
        for group in net.parameter_groups().values():
            torch.nn.utils.clip_grad_norm_(group, max_grad_norm)
    else:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    return float(np.sqrt(sq_a)), float(np.sqrt(sq_c))


def _check_finite(net: TapFingerNet, loss: torch.Tensor) -> None:
    if not torch.isfinite(loss):
        raise DivergedError(f"the loss became {loss.item()}")
    bad = sum(int((~torch.isfinite(p)).sum()) for p in net.parameters())
    if bad:
        raise DivergedError(f"{bad} parameters became non-finite")


def ppo_update(net: TapFingerNet, optimizer: torch.optim.Optimizer, samples: list[Sample],
               episodes: list[Episode], cfg: PPOConfig, rng: np.random.Generator, device: torch.device,
               value_norm: ValueNorm | None = None, ent_coef: float | None = None, actor: bool = True,
               pointer: bool = True) -> dict:
    """Epochs of clipped PPO over minibatches of rounds; the mean statistics of the update.
    `actor` False: only the critic learns (a critic warm-up before the policy may move).
    `pointer`: the acting option the samples were collected with (False: the uniform task choice)."""
    value_norm = value_norm or ValueNorm(enabled=False)
    ent_coef = cfg.ent_coef if ent_coef is None else ent_coef
    stats: dict[str, list[float]] = {k: [] for k in ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac",
                                                      "grad_norm_actor", "grad_norm_critic",
                                                      *(f"entropy_{h}" for h in HEADS))}
    round_keys, by_round = _by_round(samples)
    for _ in range(cfg.epochs):
        order = rng.permutation(len(round_keys))
        kls = []
        for start in range(0, len(order), cfg.minibatch_rounds):
            mb = [samples[i] for r in order[start:start + cfg.minibatch_rounds] for i in by_round[round_keys[r]]]
            logp, entropy, values = evaluate_samples(net, mb, episodes, device, pointer)
            old = torch.as_tensor([s.old_logp for s in mb], device=device, dtype=logp.dtype)
            adv = torch.as_tensor([s.advantage for s in mb], device=device, dtype=logp.dtype)
            ret = value_norm.normalise(torch.as_tensor([s.ret for s in mb], device=device, dtype=logp.dtype))
            adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(mb) > 1 else adv
            log_ratio = logp - old
            ratio = log_ratio.exp()
            pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
            v_loss = 0.5 * ((values - ret) ** 2).mean()
            ent = sum(entropy.values()).mean()
            optimizer.zero_grad(set_to_none=True)
            _check_finite(net, pg + v_loss + ent)
            g_actor, g_critic = _backward_measured(net, pg - ent_coef * ent if actor else None, cfg.vf_coef * v_loss,
                                                   cfg.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                kl = ((ratio - 1) - log_ratio).mean().item()
            kls.append(kl)
            for k, v in (("approx_kl", kl), ("clipfrac", ((ratio - 1).abs() > cfg.clip).float().mean().item()),
                         ("policy_loss", pg.item()), ("value_loss", v_loss.item()), ("entropy", ent.item()),
                         ("grad_norm_actor", g_actor), ("grad_norm_critic", g_critic),
                         *((f"entropy_{h}", entropy[h].mean().item()) for h in HEADS)):
                stats[k].append(v)
        if cfg.target_kl and np.mean(kls) > cfg.target_kl:
            break  # the policy moved far enough from the one that collected the data
    _check_finite(net, torch.zeros(()))
    return {k: float(np.mean(v)) for k, v in stats.items()}


def imitation_update(net: TapFingerNet, optimizer: torch.optim.Optimizer, samples: list[Sample],
                     episodes: list[Episode], epochs: int, minibatch_rounds: int, rng: np.random.Generator,
                     device: torch.device, value_norm: ValueNorm | None = None, pointer: bool = True) -> list[float]:
    """Behaviour cloning: maximise the log-probability of the teacher's decisions (and fit the critic
    to the teacher's returns, so that PPO starts with a sensible baseline)."""
    value_norm = value_norm or ValueNorm(enabled=False)
    keys, by_round = _by_round(samples)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(keys))
        epoch_loss = []
        for start in range(0, len(order), minibatch_rounds):
            mb = [samples[i] for r in order[start:start + minibatch_rounds] for i in by_round[keys[r]]]
            logp, _, values = evaluate_samples(net, mb, episodes, device, pointer)
            ret = value_norm.normalise(torch.as_tensor([s.ret for s in mb], device=device, dtype=logp.dtype))
            loss = -logp.mean() + 0.5 * ((values - ret) ** 2).mean()
            optimizer.zero_grad()
            _check_finite(net, loss)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            epoch_loss.append(-logp.mean().item())
        losses.append(float(np.mean(epoch_loss)))
    return losses
