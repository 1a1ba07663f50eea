"""Multi-agent PPO with GAE for the TapFinger network (shared parameters, centralised critic).

Decision points: an agent decides in a round when it has a startable task and no plan left
(forced "do nothing" rounds are not decisions). Rewards between an agent's consecutive decisions
are summed with discount γ per *slot* (rounds within a slot take no time), and GAE runs over each
agent's decisions. Losers of a conflict keep their task log-probability in the loss; their node
and allocation log-probabilities are left out (those choices never took effect).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.learned.actor import Decision, decide
from agents.learned.batch import collate
from agents.learned.collect import Episode
from agents.learned.config import PPOConfig  # the PPO options live with the rest of the run's configuration
from agents.learned.model import TapFingerNet
from agents.learned.policy import MASK_KEYS


@dataclass
class Sample:
    episode: int
    round: int
    agent: int
    steps: list
    lost: bool
    old_logp: float
    advantage: float
    ret: float
    old_value: float


def decision_logp(steps, lost: bool) -> float:
    lp = 0.0
    for k, s in enumerate(steps):
        lp += s.logp_task + (0.0 if (lost and k == 0) else s.logp_rest)
    return lp


def build_samples(episodes: list[Episode], gamma: float, lam: float) -> list[Sample]:
    samples: list[Sample] = []
    for e_idx, ep in enumerate(episodes):
        slots_before = np.concatenate([[0], np.cumsum(ep.slot_ended)])  # slot ends before round t
        # discounted reward-to-go helpers: value of rewards in rounds [a, b) seen from round a
        disc_at_round = gamma ** slots_before[:-1]
        cum = np.concatenate([[0.0], np.cumsum(ep.round_reward * disc_at_round)])
        per_agent: dict[int, list[tuple[int, object]]] = {}
        for t, rec in enumerate(ep.rounds):
            for d in rec.decisions:
                per_agent.setdefault(d.agent, []).append((t, d))
        for agent, decs in per_agent.items():
            n = len(decs)
            adv = np.zeros(n)
            rets = np.zeros(n)
            last = 0.0
            for k in range(n - 1, -1, -1):
                t, d = decs[k]
                t_next = decs[k + 1][0] if k + 1 < n else ep.num_rounds
                reward = (cum[t_next] - cum[t]) / disc_at_round[t]
                slots = slots_before[t_next] - slots_before[t]
                next_value = decs[k + 1][1].value if k + 1 < n else 0.0
                delta = reward + gamma ** slots * next_value - d.value
                last = delta + (gamma * lam) ** slots * last if k + 1 < n else delta
                adv[k] = last
                rets[k] = adv[k] + d.value
            for k, (t, d) in enumerate(decs):
                samples.append(Sample(e_idx, t, agent, d.steps, d.lost_conflict,
                                      decision_logp(d.steps, d.lost_conflict), float(adv[k]), float(rets[k]),
                                      d.value))
    return samples


def _minibatch_tensors(samples: list[Sample], episodes: list[Episode], device: torch.device):
    keys = sorted({(s.episode, s.round) for s in samples})
    index = {k: i for i, k in enumerate(keys)}
    batch = collate([episodes[e].rounds[r].arrays for e, r in keys]).to(device)
    n_agents = episodes[0].rounds[0].arrays["cluster_x"].shape[0]
    agent_rows = torch.as_tensor([index[(s.episode, s.round)] * n_agents + s.agent for s in samples], device=device)
    step_owner, step_rows, steps, rest_on = [], [], [], []
    for j, s in enumerate(samples):
        for k, st in enumerate(s.steps):
            step_owner.append(j)
            step_rows.append(int(agent_rows[j]))
            steps.append(st)
            rest_on.append(0.0 if (s.lost and k == 0) else 1.0)
    masks = {k: torch.as_tensor(np.stack([st.masks[k] for st in steps]), device=device) for k in MASK_KEYS}
    masks["task_mask"] = masks["task_mask"].bool()
    masks["node_mask"] = masks["node_mask"].bool()
    given = Decision(
        place=torch.as_tensor([st.place for st in steps], device=device),
        node=torch.as_tensor([st.node for st in steps], device=device),
        alloc=torch.as_tensor(np.stack([st.alloc for st in steps]), device=device),
        logp_task=None, logp_rest=None, entropy=None, task_probs=None)
    return (batch, agent_rows, torch.as_tensor(step_rows, device=device), torch.as_tensor(step_owner, device=device),
            masks, given, torch.as_tensor(rest_on, device=device))


def evaluate_samples(net: TapFingerNet, samples: list[Sample], episodes: list[Episode], device: torch.device,
                     pointer: bool = True):
    """New log-probabilities, entropies and values of stored decisions under the current weights."""
    batch, agent_rows, step_rows, owner, masks, given, rest_on = _minibatch_tensors(samples, episodes, device)
    h = net.encode(batch)
    values = net.values(h)[agent_rows]
    d = decide(net, h, batch, step_rows, masks, given=given, pointer=pointer)
    per_step = d.logp_task + d.logp_rest * rest_on
    logp = torch.zeros(len(samples), device=device).index_add_(0, owner, per_step)
    entropy = torch.zeros(len(samples), device=device).index_add_(0, owner, d.entropy)
    return logp, entropy, values


def ppo_update(net: TapFingerNet, optimizer: torch.optim.Optimizer, samples: list[Sample],
               episodes: list[Episode], cfg: PPOConfig, rng: np.random.Generator, device: torch.device) -> dict:
    stats = {"policy_loss": [], "value_loss": [], "entropy": [], "approx_kl": [], "clipfrac": []}
    by_round: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(samples):
        by_round.setdefault((s.episode, s.round), []).append(i)
    round_keys = list(by_round)
    for _ in range(cfg.epochs):
        order = rng.permutation(len(round_keys))
        kls = []
        for start in range(0, len(order), cfg.minibatch_rounds):
            idx = [i for r in order[start:start + cfg.minibatch_rounds] for i in by_round[round_keys[r]]]
            mb = [samples[i] for i in idx]
            logp, entropy, values = evaluate_samples(net, mb, episodes, device)
            old = torch.as_tensor([s.old_logp for s in mb], device=device, dtype=logp.dtype)
            adv = torch.as_tensor([s.advantage for s in mb], device=device, dtype=logp.dtype)
            ret = torch.as_tensor([s.ret for s in mb], device=device, dtype=logp.dtype)
            adv = (adv - adv.mean()) / (adv.std() + 1e-8) if len(mb) > 1 else adv
            log_ratio = logp - old
            ratio = log_ratio.exp()
            pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip, 1 + cfg.clip)).mean()
            v_loss = 0.5 * ((values - ret) ** 2).mean()
            ent = entropy.mean()
            loss = pg + cfg.vf_coef * v_loss - cfg.ent_coef * ent
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                kl = ((ratio - 1) - log_ratio).mean().item()
                kls.append(kl)
                stats["approx_kl"].append(kl)
                stats["clipfrac"].append(((ratio - 1).abs() > cfg.clip).float().mean().item())
            stats["policy_loss"].append(pg.item())
            stats["value_loss"].append(v_loss.item())
            stats["entropy"].append(ent.item())
        if cfg.target_kl and np.mean(kls) > cfg.target_kl:
            break  # the policy moved far enough from the one that collected the data
    return {k: float(np.mean(v)) for k, v in stats.items()}


def imitation_update(net: TapFingerNet, optimizer: torch.optim.Optimizer, samples: list[Sample],
                     episodes: list[Episode], epochs: int, minibatch_rounds: int, rng: np.random.Generator,
                     device: torch.device) -> list[float]:
    """Behaviour cloning: maximise the log-probability of the teacher's decisions (and fit the critic
    to the teacher's returns, so that PPO starts with a sensible baseline)."""
    by_round: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(samples):
        by_round.setdefault((s.episode, s.round), []).append(i)
    keys = list(by_round)
    losses = []
    for _ in range(epochs):
        order = rng.permutation(len(keys))
        epoch_loss = []
        for start in range(0, len(order), minibatch_rounds):
            mb = [samples[i] for r in order[start:start + minibatch_rounds] for i in by_round[keys[r]]]
            logp, _, values = evaluate_samples(net, mb, episodes, device)
            ret = torch.as_tensor([s.ret for s in mb], device=device, dtype=logp.dtype)
            loss = -logp.mean() + 0.5 * ((values - ret) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            epoch_loss.append(-logp.mean().item())
        losses.append(float(np.mean(epoch_loss)))
    return losses
