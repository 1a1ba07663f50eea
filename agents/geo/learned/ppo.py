"""The PPO stage of `tapfinger-geo` training (`agents.geo.learned.train` has the rest): sampled
episodes in groups of the same job seed (common random numbers), advantages (`collect`), clipped
updates, and the loop with its validation, checkpoints, budget and Ctrl-C."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agents.geo.learned.acting import score_slots
from agents.geo.learned.collect import Episode, gae_advantages, input_advantages, play, sample_generator
from agents.geo.learned.config import TRAIN_SEEDS, GeoTrainConfig
from agents.geo.learned.train import Run, _check_finite, imitate, make_run, teacher_costs, validate


def collect(run: Run, iteration: int) -> list[Episode]:
    cfg, k = run.cfg, run.cfg.ppo.rollouts_per_seed
    seeds_per_iter = cfg.episodes // k
    base = cfg.bc_episodes + cfg.dagger_rounds * cfg.dagger_episodes  # seeds after the imitation's
    out = []
    for j in range(cfg.episodes):
        seed = (base + iteration * seeds_per_iter + j // k) % TRAIN_SEEDS
        out.append(play(run.actor, run.engine, seed, cfg.teacher, "sample", sample_generator(cfg.seed, 1000 + iteration, j)))
    return out


def ppo_update(run: Run, opt: torch.optim.Optimizer, episodes: list[Episode]) -> dict[str, float]:
    cfg, p = run.cfg, run.cfg.ppo
    if p.baseline == "input":
        adv, ret = input_advantages(episodes, p.rollouts_per_seed, cfg.reward_scale)
    else:
        adv, ret = gae_advantages(episodes, p.gamma, p.gae_lambda, cfg.reward_scale)
    records = [r for e in episodes for r in e.records]
    old = torch.tensor([r.logp for r in records], device=run.device)
    adv_t = torch.as_tensor((adv - adv.mean()) / (adv.std() + 1e-8), device=run.device)
    ret_t = torch.as_tensor(ret, device=run.device)
    rng = np.random.default_rng([cfg.seed, 11, run.step])
    stats: dict[str, list[float]] = {"policy_loss": [], "value_loss": [], "entropy": [], "kl": [], "ratio0": []}
    for epoch in range(p.epochs):
        kls = []
        for idx in np.array_split(rng.permutation(len(records)), max(1, len(records) // p.minibatch_slots)):
            it = torch.as_tensor(idx, device=run.device)
            logp, ent, value = score_slots(run.net, [records[i] for i in idx], run.device)
            ratio = torch.exp(logp - old[it])
            if epoch == 0 and not stats["ratio0"]:
                stats["ratio0"].append(float((ratio.detach() - 1).abs().max()))
            a = adv_t[it]
            pl = -torch.min(ratio * a, ratio.clamp(1 - p.clip, 1 + p.clip) * a).mean()
            vl = ((value - ret_t[it]) ** 2).mean()
            loss = pl + p.vf_coef * vl - p.ent_coef * ent.mean()
            _check_finite(loss, "PPO")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(run.net.parameters(), p.max_grad_norm)
            opt.step()
            kls.append(float((old[it] - logp).mean()))
            for k, v in (("policy_loss", pl), ("value_loss", vl), ("entropy", ent.mean())):
                stats[k].append(float(v))
        stats["kl"].append(float(np.mean(kls)))
        if p.target_kl and np.mean(kls) > p.target_kl:
            break
    run.sync()
    return {k: float(np.mean(v)) for k, v in stats.items() if v}


def train(cfg: GeoTrainConfig, writer=None, progress: bool = True) -> Run:
    """The whole run; returns it (its folder holds last.pt and, with validation, best.pt)."""
    run = make_run(cfg, writer)
    bar = tqdm(total=cfg.iterations, desc=f"train {cfg.scenario}", unit="iter", disable=not progress)
    try:
        bar.set_postfix_str("cloning")
        imitate(run, bar)
        costs = teacher_costs(run) if cfg.eval_every else {}
        if costs:
            bar.set_postfix_str(f"validation {validate(run, costs):.1f} (teacher {np.mean(list(costs.values())):.1f})")
        opt = torch.optim.Adam(run.net.parameters(), lr=cfg.ppo.lr)
        for it in range(cfg.iterations):
            if run.over_time():
                bar.write(f"--max-minutes {cfg.max_minutes}: stopped after {it} PPO iterations")
                break
            episodes = collect(run, it)
            stats = ppo_update(run, opt, episodes)
            run.step = it + 1
            mean_cost = float(np.mean([e.total_cost for e in episodes]))
            for k, v in {**stats, "episode_cost": mean_cost}.items():
                run.writer.add_scalar(f"ppo/{k}", v, run.step)
            run.save("last.pt", stage="ppo")
            post = f"cost {mean_cost:.1f} ent {stats['entropy']:.2f}"
            if cfg.eval_every and run.step % cfg.eval_every == 0:
                post += f" val {validate(run, costs):.1f} best {run.best:.1f}"
            bar.set_postfix_str(post)
            bar.update()
    except KeyboardInterrupt:
        bar.write(f"interrupted: {Path(cfg.run_dir) / 'last.pt'} holds the last finished stage or iteration")
    finally:
        bar.close()
        run.writer.flush()
    return run

