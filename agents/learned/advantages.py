"""From collected episodes to PPO samples: values, returns and advantages.

Decision points: an agent decides in a round when it has a startable task and no plan left
(forced "do nothing" rounds are not decisions). Rewards between an agent's consecutive decisions
are summed with discount γ per *slot* (rounds within a slot take no time).

Two advantage estimators:
- "gae": GAE over each agent's decisions, bootstrapped with the critic's values;
- "input": the input-driven baseline of Decima (Mao et al., ICLR'19). Arrivals are the input
  process, and our episodes share them by seed (common random numbers), so K episodes of the same
  arrival seed with different action samples differ only by the policy's choices: a decision's
  advantage is its return-to-go from its slot minus the mean return-to-go of the *other* episodes
  of that seed from the same slot. No critic is needed for it (the critic is still fitted, for
  diagnostics and for "gae").

Values are the critic's, computed here in batches of stored rounds (acting does not compute
them), and de-normalised with `ValueNorm`: the critic learns returns scaled to zero mean and unit
variance by running statistics, so one learning rate suits scenarios whose returns differ by 100x.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from agents.learned.batch import collate
from agents.learned.collect import Episode
from agents.learned.model import TapFingerNet


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


class ValueNorm:
    """Running mean and variance of the value targets (parallel-variance update per batch)."""

    def __init__(self, enabled: bool = True, state: dict | None = None):
        self.enabled = enabled
        self.mean, self.var, self.count = 0.0, 1.0, 0.0
        if state:
            self.mean, self.var, self.count = float(state["mean"]), float(state["var"]), float(state["count"])

    def state(self) -> dict:
        return {"mean": self.mean, "var": self.var, "count": self.count}

    @property
    def std(self) -> float:
        return float(np.sqrt(max(self.var, 1e-8)))

    def update(self, x: np.ndarray) -> None:
        if not self.enabled or not len(x):
            return
        n, m, v = float(len(x)), float(np.mean(x)), float(np.var(x))
        if self.count == 0:
            self.mean, self.var, self.count = m, v, n
            return
        total = self.count + n
        delta = m - self.mean
        self.var = (self.var * self.count + v * n + delta ** 2 * self.count * n / total) / total
        self.mean += delta * n / total
        self.count = total

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std if self.enabled else x

    def denormalise(self, x: np.ndarray) -> np.ndarray:
        return x * self.std + self.mean if self.enabled else x


@torch.no_grad()
def attach_values(net: TapFingerNet, episodes: list[Episode], value_norm: ValueNorm, device: torch.device,
                  chunk_rounds: int = 512) -> None:
    """Set each decision's `value` to the critic's (de-normalised) value of its round and agent."""
    keys = [(e, t) for e, ep in enumerate(episodes) for t, rec in enumerate(ep.rounds) if rec.decisions]
    for start in range(0, len(keys), chunk_rounds):
        part = keys[start:start + chunk_rounds]
        rounds = [episodes[e].rounds[t] for e, t in part]
        batch = collate([r.arrays for r in rounds]).to(device)
        v = value_norm.denormalise(net.values(net.encode(batch), batch).cpu().numpy().astype(np.float64))
        n_agents = rounds[0].arrays["cluster_x"].shape[0]
        for k, rec in enumerate(rounds):
            for d in rec.decisions:
                d.value = float(v[k * n_agents + d.agent])


def decision_logp(steps, lost: bool) -> float:
    lp = 0.0
    for k, s in enumerate(steps):
        lp += s.logp_task + (0.0 if (lost and k == 0) else s.logp_rest)
    return lp


def _per_agent(ep: Episode) -> dict[int, list[tuple[int, object]]]:
    out: dict[int, list[tuple[int, object]]] = {}
    for t, rec in enumerate(ep.rounds):
        for d in rec.decisions:
            out.setdefault(d.agent, []).append((t, d))
    return out


def slot_returns(ep: Episode, gamma: float) -> np.ndarray:
    """Discounted return-to-go from each slot of the episode (its rewards come at slot ends)."""
    r = ep.round_reward[ep.slot_ended]
    g = np.zeros(len(r) + 1)
    for s in range(len(r) - 1, -1, -1):
        g[s] = r[s] + gamma * g[s + 1]
    return g


def _gae(ep: Episode, decs: list, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    slots_before = np.concatenate([[0], np.cumsum(ep.slot_ended)])  # slot ends before round t
    disc_at_round = gamma ** slots_before[:-1]
    cum = np.concatenate([[0.0], np.cumsum(ep.round_reward * disc_at_round)])
    n = len(decs)
    adv, rets, last = np.zeros(n), np.zeros(n), 0.0
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
    return adv, rets


def _input_baselines(episodes: list[Episode], gamma: float) -> list[np.ndarray]:
    """Per episode, per slot: mean return-to-go of the other episodes of the same arrival seed."""
    returns = [slot_returns(ep, gamma) for ep in episodes]
    by_seed: dict[int, list[int]] = {}
    for i, ep in enumerate(episodes):
        by_seed.setdefault(ep.seed, []).append(i)
    out = []
    for i, ep in enumerate(episodes):
        others = [j for j in by_seed[ep.seed] if j != i]
        if not others:
            raise ValueError(f"the input-driven baseline needs at least 2 episodes of arrival seed {ep.seed}. "
                             f"Fix: pass --rollouts-per-seed 2 or more (and --envs a multiple of it).")
        n = len(returns[i])
        padded = [np.pad(returns[j], (0, max(0, n - len(returns[j]))))[:n] for j in others]
        out.append(np.mean(padded, axis=0))
    return out


def build_samples(episodes: list[Episode], gamma: float, lam: float, baseline: str = "gae") -> list[Sample]:
    """One sample per decision. `baseline`: "gae" (needs values: `attach_values`) or "input"."""
    inputs = _input_baselines(episodes, gamma) if baseline == "input" else None
    samples: list[Sample] = []
    for e_idx, ep in enumerate(episodes):
        slot_of_round = np.concatenate([[0], np.cumsum(ep.slot_ended)])[:-1]
        own = slot_returns(ep, gamma) if inputs is not None else None
        for agent, decs in _per_agent(ep).items():
            if inputs is None:
                adv, rets = _gae(ep, decs, gamma, lam)
            else:
                slots = np.array([slot_of_round[t] for t, _ in decs])
                rets = own[slots]
                adv = rets - inputs[e_idx][slots]
            for k, (t, d) in enumerate(decs):
                samples.append(Sample(e_idx, t, agent, d.steps, d.lost_conflict,
                                      decision_logp(d.steps, d.lost_conflict), float(adv[k]), float(rets[k]),
                                      d.value))
    return samples


def explained_variance(values: np.ndarray, returns: np.ndarray) -> float:
    """1 - Var(returns - values) / Var(returns): 1 is a perfect critic, 0 no better than a constant."""
    var = float(np.var(returns))
    return float("nan") if var == 0 else 1.0 - float(np.var(returns - values)) / var
