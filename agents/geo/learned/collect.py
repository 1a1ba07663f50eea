"""Episodes of `tapfinger-geo` for training: the teacher's own (behaviour cloning), the learner's
with the teacher's labels (DAgger), the learner's sampled ones (PPO), and their advantages.

Every random draw is seeded: the jobs by the episode seed (`draw_jobs`), the learner's samples by
a `torch.Generator` seeded from the run seed, the iteration and the episode. Slots with no pending
job are not decisions and cost nothing (latency accrues only for pending jobs), so an episode's
records are its decided slots and the sum of their costs is the episode's total cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from agents.geo.learned.acting import SlotRecord, decode, slot_inputs
from agents.geo.learned.model import GeoNet
from agents.geo.registry import make_geo_policy
from tapfinger.sim.geo.engine import GeoDecision, GeoEngine


@dataclass
class Episode:
    seed: int
    records: list[SlotRecord] = field(default_factory=list)  # the decided slots (their labels, in DAgger)
    slot_costs: list[float] = field(default_factory=list)  # every slot's cost, slot 0 first
    total_cost: float = 0.0


def sample_generator(run_seed: int, stage: int, episode: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([run_seed, stage, episode]).generate_state(1)[0]))


def play(net: GeoNet | None, engine: GeoEngine, seed: int, teacher_name: str, mode: str,
         gen: torch.Generator | None = None) -> Episode:
    """One episode. mode: "teacher" (the teacher plays; records hold its choices as labels),
    "dagger" (the learner samples; records hold the teacher's labels of the learner's states),
    "sample" or "greedy" (the learner plays; records hold its own choices)."""
    teacher = make_geo_policy(teacher_name)
    teacher.reset(engine.scenario, seed)
    engine.reset(seed)
    ep = Episode(seed)
    while not engine.done:
        inp = slot_inputs(engine, teacher if (mode in ("teacher", "dagger") or net.hint_weight is not None) else None)
        decision, record = GeoDecision(), None
        if inp is not None:
            if mode == "teacher":
                _, record = decode(net, engine, inp, "label")
                decision = inp.hint  # the teacher's whole decision, jobs beyond the window included
            elif mode == "dagger":
                decision, _ = decode(net, engine, inp, "sample", gen)
                _, record = decode(net, engine, inp, "label")
            else:
                decision, record = decode(net, engine, inp, mode, gen)
        cost = engine.step(decision)
        ep.slot_costs.append(cost)
        if record is not None:
            record.cost = cost
            ep.records.append(record)
    ep.total_cost = engine.total_cost()
    return ep


def _to_go(costs: list[float], horizon: int) -> np.ndarray:
    """[horizon + 1] cost from each slot to the end (0 past the episode's end)."""
    out = np.zeros(horizon + 1)
    c = np.asarray(costs, dtype=float)
    out[:len(c)] = np.cumsum(c[::-1])[::-1]
    return out


def input_advantages(episodes: list[Episode], rollouts: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Decima's input-driven baseline over common random numbers: episodes come in groups of
    `rollouts` of the same seed, and a decision's advantage is minus (its cost-to-go from its slot
    minus the mean cost-to-go of the group's other episodes from the same slot), over `scale`.
    Returns (advantages, value targets = minus the cost-to-go over scale), one per record."""
    adv, ret = [], []
    for g in range(0, len(episodes), rollouts):
        group = episodes[g:g + rollouts]
        if len({e.seed for e in group}) != 1:
            raise ValueError("input advantages need the episodes of a seed side by side (rollouts_per_seed)")
        horizon = max(len(e.slot_costs) for e in group)
        togo = np.stack([_to_go(e.slot_costs, horizon) for e in group])
        for k, e in enumerate(group):
            others = (togo.sum(axis=0) - togo[k]) / max(len(group) - 1, 1)
            for r in e.records:
                adv.append(-(togo[k, r.slot] - others[r.slot]) / scale)
                ret.append(-togo[k, r.slot] / scale)
    return np.asarray(adv, dtype=np.float32), np.asarray(ret, dtype=np.float32)


def gae_advantages(episodes: list[Episode], gamma: float, lam: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """GAE over each episode's decided slots, bootstrapped with the values recorded at collection."""
    adv, ret = [], []
    for e in episodes:
        r = np.array([-rec.cost / scale for rec in e.records])
        v = np.array([rec.value for rec in e.records] + [0.0])  # the episode ends: no value after it
        a, last = np.zeros(len(r)), 0.0
        for t in reversed(range(len(r))):
            last = r[t] + gamma * v[t + 1] - v[t] + gamma * lam * last
            a[t] = last
        adv.extend(a)
        ret.extend(a + v[:-1])
    return np.asarray(adv, dtype=np.float32), np.asarray(ret, dtype=np.float32)
