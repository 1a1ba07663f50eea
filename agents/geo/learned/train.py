"""Training of `tapfinger-geo`: behaviour cloning of the teacher (okita) on its own episodes, DAgger
rounds on the learner's, then PPO with reward = - slot cost / reward_scale. Seeded and
deterministic (one CPU thread by default); a tqdm bar, TensorBoard scalars in the run folder,
`last.pt` after every finished stage and iteration, `best.pt` = the best validated policy (greedy
play on seeds 900.., paired with the teacher on the same seeds). Ctrl-C or --max-minutes stop the
run with those files kept. `docs/geo-learned.md` has the design and the measured results.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from agents.geo.learned.acting import score_slots
from agents.geo.learned.checkpoint import save_geo_checkpoint
from agents.geo.learned.collect import play, sample_generator
from agents.geo.learned.config import TRAIN_SEEDS, VALIDATION_SEED, GeoTrainConfig
from agents.geo.learned.model import GeoNet, GeoNetConfig
from tapfinger.sim.geo.engine import GeoEngine
from tapfinger.sim.geo.scenario import load_geo_scenario


class DivergedError(RuntimeError):
    """A loss became non-finite: the update is not kept."""


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available to torch here. Fix: pass --device cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: use cpu or cuda")
    return torch.device(name)


@dataclass
class Run:
    cfg: GeoTrainConfig
    net: GeoNet  # on the training device
    actor: GeoNet  # the copy that plays (on cpu)
    engine: GeoEngine
    device: torch.device
    writer: object
    started: float
    best: float = float("inf")
    step: int = 0  # TensorBoard step: PPO iterations done

    def sync(self) -> None:
        if self.actor is not self.net:
            self.actor.load_state_dict({k: v.cpu() for k, v in self.net.state_dict().items()})

    def over_time(self) -> bool:
        return self.cfg.max_minutes > 0 and time.time() - self.started > 60 * self.cfg.max_minutes

    def save(self, name: str, **extra) -> Path:
        return save_geo_checkpoint(Path(self.cfg.run_dir) / name, self.net, self.engine.scenario, self.cfg.teacher,
                                   extra={"train_config": self.cfg.to_dict(), "iteration": self.step, **extra})


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def make_run(cfg: GeoTrainConfig, writer=None) -> Run:
    cfg.validate()
    seed_everything(cfg.seed, cfg.threads)
    device = resolve_device(cfg.device)
    sc = load_geo_scenario(cfg.scenario)
    ncfg = GeoNetConfig(num_sites=sc.num_sites, num_resources=sc.num_resources, max_workers=sc.max_workers_per_site,
                        window=sc.window, hidden=cfg.model.hidden, layers=cfg.model.layers, heads=cfg.model.heads,
                        teacher_hint=cfg.model.teacher_hint)
    actor = GeoNet(ncfg)
    net = actor if device.type == "cpu" else GeoNet(ncfg).to(device)
    if net is not actor:
        net.load_state_dict(actor.state_dict())
    if writer is None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(cfg.run_dir)
    return Run(cfg, net, actor, GeoEngine(sc), device, writer, time.time())


def _check_finite(loss: torch.Tensor, what: str) -> None:
    if not torch.isfinite(loss):
        raise DivergedError(f"the {what} loss became {float(loss)}: the update was dropped. Fix: lower the learning "
                            f"rate (--lr / --bc-lr) or --reward-scale's inverse (a larger --reward-scale)")


def bc_fit(run: Run, records: list, epochs: int, tag: str) -> float:
    """Minimise minus the log-probability of the teacher's labels; returns the last epoch's mean loss."""
    opt = torch.optim.Adam(run.net.parameters(), lr=run.cfg.bc_lr)
    rng = np.random.default_rng([run.cfg.seed, 7, len(records)])
    mb = run.cfg.ppo.minibatch_slots
    loss_mean = float("nan")
    for epoch in range(epochs):
        losses = []
        for idx in np.array_split(rng.permutation(len(records)), max(1, len(records) // mb)):
            logp, _, _ = score_slots(run.net, [records[i] for i in idx], run.device)
            loss = -logp.mean()
            _check_finite(loss, "behaviour-cloning")
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(run.net.parameters(), 1.0)
            opt.step()
            losses.append(float(loss.detach()))
        loss_mean = float(np.mean(losses))
        run.writer.add_scalar(f"{tag}/loss", loss_mean, epoch)
    run.sync()
    return loss_mean


def imitate(run: Run, bar) -> None:
    """Behaviour cloning on the teacher's episodes, then DAgger rounds (the learner samples, the
    teacher labels its states; the data sets are aggregated)."""
    cfg = run.cfg
    if cfg.bc_episodes == 0:
        return
    data = []
    for k in range(cfg.bc_episodes):
        data += play(run.actor, run.engine, k % TRAIN_SEEDS, cfg.teacher, "teacher").records
    bar.set_postfix_str(f"cloning on {len(data)} slots")
    loss = bc_fit(run, data, cfg.bc_epochs, "bc")
    for d in range(cfg.dagger_rounds):
        if run.over_time():
            break
        for k in range(cfg.dagger_episodes):
            seed = (cfg.bc_episodes + d * cfg.dagger_episodes + k) % TRAIN_SEEDS
            data += play(run.actor, run.engine, seed, cfg.teacher, "dagger", sample_generator(cfg.seed, 1 + d, k)).records
        loss = bc_fit(run, data, cfg.bc_epochs, f"dagger{d}")
        bar.set_postfix_str(f"dagger {d + 1}: loss {loss:.3f}")
    run.writer.add_scalar("imitation/final_loss", loss, 0)
    run.save("last.pt", stage="imitation")


def validate(run: Run, teacher_costs: dict[int, float]) -> float:
    """Mean total cost of greedy play on the validation seeds; best.pt when it is the lowest yet."""
    seeds = sorted(teacher_costs)
    costs = [play(run.actor, run.engine, s, run.cfg.teacher, "greedy").total_cost for s in seeds]
    mean, teacher = float(np.mean(costs)), float(np.mean([teacher_costs[s] for s in seeds]))
    run.writer.add_scalar("eval/cost", mean, run.step)
    run.writer.add_scalar("eval/teacher_cost", teacher, run.step)
    run.writer.add_scalar("eval/diff_vs_teacher", mean - teacher, run.step)
    if mean < run.best:
        run.best = mean
        run.save("best.pt", validation_cost=mean, teacher_validation_cost=teacher)
    return mean


def teacher_costs(run: Run) -> dict[int, float]:
    from agents.geo.registry import make_geo_policy
    from envs.geo_episode import run_geo_episode

    teacher = make_geo_policy(run.cfg.teacher)
    seeds = range(VALIDATION_SEED, VALIDATION_SEED + run.cfg.eval_seeds)
    return {s: run_geo_episode(run.engine.scenario, teacher, s).total_cost for s in seeds}
