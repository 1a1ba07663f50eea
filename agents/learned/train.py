"""The training loop behind `tapfinger train`: optional imitation warm start, then multi-agent PPO;
TensorBoard logs, periodic evaluation against the best heuristic, atomic resumable checkpoints.

Resuming is exact: every random draw of an iteration (episode seeds, action sampling, minibatch
order) is derived from (seed, iteration), and the checkpoint holds the weights, the optimiser
state and the iteration, so N steps straight and N/2 + resume + N/2 give identical parameters.

The acting options (`--multi-task`, `--max-sequence`, `--no-bayes`, `--no-pointer`) are those of
collection, of the PPO update and of the periodic evaluation, and are stored in the checkpoint,
so `tapfinger` plays in the mode it was trained in. With `--multi-task` each decision is a
sequence of choices and PPO learns the sequence's probability (agents.learned.ppo). The
imitation warm start stays single-step in that mode: a heuristic teacher labels one start per
agent and round (collect.teacher_record), which trains the heads every step of a sequence uses;
PPO then learns when to go on or stop a sequence.

`--decline` (auto: on exactly where the scenario has `allow_decline`) gives the network the decline
action (`ModelConfig.decline`, stored in the checkpoint): collection, PPO and evaluation offer it,
a teacher's declines become labels (collect.teacher_record), and `--miss-penalty` is what makes a
decline pay in PPO (a decline is a miss, charged like a late task).

Faults (scenarios with `[faults]`): `--node-faults` (auto: on exactly there) gives the network the
node-health features (`ModelConfig.node_faults`), and `--fault-scales` trains over a distribution
of fault rates, like `--rates` over loads (`tapfinger.sim.faults.fault_scaled`: arrival seed j of an iteration
plays at fault_scales[j % len]; 0 = no faults), so the policy meets fault rates around the
scenario's, not only the one it will be evaluated at. The periodic evaluation plays the scenario's
own faults (`agents.learned.train_eval`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agents.learned.advantages import (
    ValueNorm,
    attach_values,
    build_samples,
    explained_variance,
)
from agents.learned.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from agents.learned.collect import Episode, EpisodeJob, RewardSpec
from agents.learned.config import TrainConfig
from agents.learned.model import TapFingerNet
from agents.learned.ppo import DivergedError, imitation_update, ppo_update
from agents.learned.resume import check_resumable
from agents.learned.train_eval import (EVAL_SEED_START, EvalResult, PeriodicEvaluation, evaluate_policy,
                                       heuristic_avg_jct, heuristic_eval)
from agents.learned.workers import Collector
from envs.graph import NODE_FAULT_COLUMNS
from tapfinger.sim.scenario import Scenario

# the periodic evaluation's names, where callers found them before it had its own module
__all__ = ["EVAL_SEED_START", "EvalResult", "Trainer", "evaluate_policy", "heuristic_avg_jct", "heuristic_eval"]



def _rng_state() -> dict:
    return {"torch": torch.get_rng_state()}



class Trainer:
    def __init__(self, cfg: TrainConfig, scenario: Scenario, resume: bool = False, progress: bool = True):
        self.cfg = cfg.validate()
        self.scenario = scenario
        self.run_dir = Path(cfg.run_dir)
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ValueError(f"--run-dir {self.run_dir} is a file, not a folder. Fix: pass a new or existing folder.")
        if cfg.rates and scenario.arrivals.process != "poisson":
            raise ValueError(f"--rates needs a Poisson scenario; {scenario.name} replays a trace. Fix: drop --rates")
        if cfg.fault_scales and not scenario.faults.active:
            raise ValueError(f"--fault-scales needs a scenario with faults; '{scenario.name}' has no active [faults] "
                             f"table. Fix: drop --fault-scales, or train on a scenario with faults (e.g. edge-faulty)")
        self.device = torch.device(cfg.device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda asked for, but torch sees no CUDA device. Fix: use --device cpu, or "
                               "install a CUDA build of torch on a GPU machine.")
        self.ckpt_path = self.run_dir / "checkpoint.pt"
        self.progress = progress
        torch.manual_seed(cfg.seed)
        self.model_cfg = cfg.model_config(scenario)
        self.net = TapFingerNet(self.model_cfg).to(self.device)
        self.optimizer = _optimizer(self.net, cfg)
        self.value_norm = ValueNorm(cfg.ppo.value_norm)
        self.iteration = 0
        self.saved_iteration: int | None = None
        self.steps = 0
        self.imitation_done = False
        self.history: list[dict] = []
        self.started = time.time()  # wall clock of the run's start (kept across resumes)
        self.resumed = resume
        if resume:
            self._resume()
        elif self.ckpt_path.exists():
            raise RuntimeError(f"{self.ckpt_path} exists. Fix: pass --resume to continue that run, or choose a "
                               f"new --run-dir.")
        elif cfg.init_from:
            self._init_from(Path(cfg.init_from))

    def _init_from(self, path: Path) -> None:
        """Start from a trained policy (e.g. a shipped checkpoint): its weights; a separate critic
        that the checkpoint lacks starts as a copy of the actor's encoder (its head is the stored one).

        Declines: a checkpoint without the decline head (trained with --decline off, or on the
        scenario before it allowed declining) gives this run every weight but that head, which
        starts as a fresh network's (bias DECLINE_INIT: it almost never declines until PPO finds
        where declining pays); so a policy trained without declines is fine-tuned with them. The
        scenario must be the checkpoint's, except that it may allow declining where the
        checkpoint's did not. A checkpoint with the head, on a run without declines, gives all but
        the head.

        Node faults: a checkpoint without the node-health columns (`ModelConfig.node_faults`), on a
        run with them, gives its input layers with zero weights on the new columns, so the run
        starts as the checkpoint's policy, blind to faults until PPO learns to use them."""
        src = load_checkpoint(path, self._init_scenario(path)).net
        for name in ("hidden", "layers", "heads", "encoder"):
            if getattr(src.cfg, name) != getattr(self.model_cfg, name):
                raise CheckpointError(f"--init-from {path} has --{name} {getattr(src.cfg, name)!r}, this run "
                                      f"{getattr(self.model_cfg, name)!r}. Fix: pass --{name} "
                                      f"{getattr(src.cfg, name)}.")
        # Hints are an input and a weight per head: a run without them would silently drop what the
        # policy copies (and one with another hint policy would copy another heuristic).
        hinted = (src.cfg.greedy_hint, src.cfg.hint_policy if src.cfg.greedy_hint else "")
        if hinted != (self.model_cfg.greedy_hint, self.model_cfg.hint_policy if self.model_cfg.greedy_hint else ""):
            fix = (f"pass --greedy-hint --hint-policy {src.cfg.hint_policy}" if src.cfg.greedy_hint
                   else "leave out --greedy-hint")
            raise CheckpointError(f"--init-from {path} was trained {'with' if src.cfg.greedy_hint else 'without'} "
                                  f"hints{f' from {src.cfg.hint_policy}' if src.cfg.greedy_hint else ''}, this run "
                                  f"{'with' if self.model_cfg.greedy_hint else 'without'} "
                                  f"{f'hints from {self.model_cfg.hint_policy}' if self.model_cfg.greedy_hint else 'hints'}. "
                                  f"Fix: {fix}.")
        own = self.net.state_dict()
        # everything that fits: a critic of another input width (critic_progress) starts fresh
        self.net.load_state_dict(_fitting(own, src.state_dict()), strict=False)
        if self.net.critic_encoder is not None and src.critic_encoder is None:
            self.net.critic_encoder.load_state_dict(_fitting(self.net.critic_encoder.state_dict(),
                                                             src.encoder.state_dict()))
        # The starting policy replaces the warm start; with --dagger-rounds it is the learner of an
        # expert iteration instead: it plays, the --imitate teacher (e.g. rollout) labels its states.
        self.imitation_done = not (self.cfg.imitate and self.cfg.dagger_rounds)

    def _init_scenario(self, path: Path) -> Scenario:
        """The scenario --init-from's checkpoint is checked against: this run's, or (when that is
        what the checkpoint was trained on) the same scenario without allow_decline."""
        from dataclasses import replace

        from agents.learned.checkpoint import read_payload
        from tapfinger.sim.scenario import scenario_fingerprint

        if self.scenario.allow_decline:
            without = replace(self.scenario, allow_decline=False)
            if read_payload(path)["scenario_fingerprint"] == scenario_fingerprint(without):
                return without
        return self.scenario

    # ------------------------------------------------------------------ checkpoints
    def _resume(self) -> None:
        if not self.ckpt_path.exists():
            raise CheckpointError(f"--resume: no checkpoint at {self.ckpt_path}. Fix: drop --resume to start a run "
                                  f"there, or give the run folder of an earlier `tapfinger train`.")
        ckpt = load_checkpoint(self.ckpt_path, self.scenario, expect_config=self.model_cfg)
        payload = ckpt.payload
        check_resumable(self.ckpt_path, payload, self.cfg)
        self.net.load_state_dict(ckpt.net.state_dict())
        self.optimizer.load_state_dict(payload["optimizer_state"])
        self.iteration = self.saved_iteration = int(payload["iteration"])
        self.steps = int(payload["step"])
        self.imitation_done = bool(payload.get("imitation_done", False))
        self.history = json.loads(payload.get("history", "[]"))
        self.started = float(payload.get("started", self.started))
        self.value_norm = ValueNorm(self.cfg.ppo.value_norm, json.loads(payload.get("value_norm", "{}")))
        torch.set_rng_state(payload["rng"]["torch"])

    def save(self, path: Path | None = None) -> None:
        save_checkpoint(path or self.ckpt_path, net=self.net, scenario=self.scenario, acting=self.cfg.acting_dict(),
                        step=self.steps, extra={"optimizer_state": self.optimizer.state_dict(),
                                                "iteration": self.iteration, "rng": _rng_state(),
                                                "imitation_done": self.imitation_done,
                                                "started": self.started,
                                                "train_config": json.dumps(asdict(self.cfg)),
                                                "value_norm": json.dumps(self.value_norm.state()),
                                                "history": json.dumps(self.history)})
        if path is None:
            self.saved_iteration = self.iteration

    # ------------------------------------------------------------------ loop
    def _jobs(self, n: int, seed_base: int, teacher: str = "", learner_acts: bool = False) -> list[EpisodeJob]:
        """`n` episodes; with --rollouts-per-seed K, K consecutive episodes share an arrival seed (and
        its load, with --rates, and its fault scale, with --fault-scales)."""
        k = self.cfg.ppo.rollouts_per_seed if not teacher else 1
        rates = self.cfg.rates or (0.0,)
        scales = self.cfg.fault_scales or (1.0,)
        return [EpisodeJob(seed_base + e // k, (self.cfg.seed * 1_000_003 + seed_base + e) % (2**31), teacher,
                           learner_acts, rate=float(rates[(e // k) % len(rates)]),
                           fault_scale=float(scales[(e // k) % len(scales)])) for e in range(n)]

    def train(self, log=print) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.run_dir))
        if not self.resumed:
            writer.add_text("hyperparameters", self.cfg.hparam_table())
        reward = RewardSpec(self.cfg.reward_scale, self.cfg.miss_penalty)
        collector = Collector(self.scenario, self.cfg.acting, self.cfg.worker_count(), reward, self.device,
                              backend=self.cfg.backend, ray_address=self.cfg.ray_address)
        try:
            self._loop(collector, writer, log)
        except KeyboardInterrupt:
            collector.terminate()
            raise KeyboardInterrupt(self._stopped_line("stopped")) from None
        except DivergedError as exc:
            collector.terminate()
            raise RuntimeError(f"{self._stopped_line(f'training diverged at iteration {self.iteration + 1} ({exc})')}"
                               f" Fix: lower --lr (now {self.cfg.ppo.lr}) or --max-grad-norm "
                               f"(now {self.cfg.ppo.max_grad_norm}).") from None
        finally:
            collector.close()
            writer.close()
        self.save()
        return {"iterations": self.iteration, "steps": self.steps, "history": self.history}

    def _stopped_line(self, why: str) -> str:
        if self.saved_iteration is None:
            return f"{why}; nothing was saved yet (no iteration finished)."
        return (f"{why}; {self.ckpt_path} holds the last finished iteration ({self.saved_iteration}). "
                f"Continue with the same command plus --resume.")

    def _loop(self, collector: Collector, writer, log) -> None:
        if self.cfg.imitate and not self.imitation_done:
            self._imitate(collector, writer, log)
        bar = tqdm(total=self.cfg.total_steps, initial=min(self.steps, self.cfg.total_steps), unit="step",
                   desc=f"train {self.scenario.name}", disable=not self.progress)
        evaluator = PeriodicEvaluation(self, writer, bar)
        deadline = time.time() + 60 * self.cfg.max_minutes if self.cfg.max_minutes else np.inf
        while self.steps < self.cfg.total_steps and time.time() < deadline:
            entry = self._ppo_iteration(collector, writer, bar)
            if self.cfg.eval_every and self.iteration % self.cfg.eval_every == 0:
                entry.update(evaluator.run())
            self.history.append(entry)
            if (self.iteration % self.cfg.checkpoint_every == 0 or self.steps >= self.cfg.total_steps
                    or time.time() >= deadline):
                self.save()
        bar.close()

    def _ppo_iteration(self, collector: Collector, writer, bar) -> dict:
        """Collect `envs` episodes, one PPO update; returns the iteration's history entry."""
        t0 = time.perf_counter()
        # Training episodes use seeds from 10_000 up: never the evaluation seeds (< 10_000).
        seed_base = 10_000 + self.iteration * self.cfg.envs + self.cfg.seed * 1_000_000
        episodes = collector.run(self.net, self._jobs(self.cfg.envs, seed_base))
        t1 = time.perf_counter()
        rounds = sum(e.num_rounds for e in episodes)
        attach_values(self.net, episodes, self.value_norm, self.device)
        samples = build_samples(episodes, self.cfg.ppo.gamma, self.cfg.ppo.gae_lambda, self.cfg.ppo.baseline)
        ev = explained_variance(np.array([s.old_value for s in samples]), np.array([s.ret for s in samples]))
        self.value_norm.update(np.array([s.ret for s in samples]))
        ent_coef = self.cfg.ent_coef_at(self.steps)
        self.net.train()
        stats = ppo_update(self.net, self.optimizer, samples, episodes, self.cfg.ppo,
                           np.random.default_rng([self.cfg.seed, self.iteration]), self.device,
                           self.value_norm, ent_coef, actor=self.iteration >= self.cfg.ppo.critic_warmup,
                           pointer=self.cfg.acting.pointer)
        self.net.eval()
        t2 = time.perf_counter()
        self.iteration += 1
        self.steps += rounds
        bar.update(rounds)
        avg_jct, unfinished = _episode_quality(episodes)
        # choices per decision: 1 in single-task mode, the mean sequence length in multi-task mode
        stats.update(explained_variance=ev, ent_coef=ent_coef,
                     steps_per_decision=float(np.mean([len(s.steps) for s in samples])) if samples else 0.0)
        _log_iteration(writer, self.steps, episodes, stats, rounds / (t1 - t0), rounds / (t2 - t0), t2 - t1)
        return {"iteration": self.iteration, "step": self.steps, "train_avg_jct": avg_jct,
                "unfinished_tasks": unfinished, "sps": rounds / (t2 - t0), "rounds_per_s": rounds / (t1 - t0),
                "collect_s": t1 - t0, "update_s": t2 - t1, "wall": time.time(), **stats}

    def _imitate(self, collector: Collector, writer, log) -> None:
        """Behaviour cloning of the teacher, then DAgger: the learner plays, the teacher labels the
        states the learner visits, and the aggregated data is fitted again."""
        n = self.cfg.imitation_episodes or 2 * self.cfg.envs
        seed_base = 5_000_000 + self.cfg.seed * 1000
        # from --init-from: no teacher-played episodes, the learner visits every labelled state
        expert_iteration = bool(self.cfg.init_from)
        episodes = [] if expert_iteration else collector.run(self.net, self._jobs(n, seed_base,
                                                                                   teacher=self.cfg.imitate))
        first = int(expert_iteration)
        rng = np.random.default_rng([self.cfg.seed, 7])
        step = 0
        for k in range(first, self.cfg.dagger_rounds + 1):
            if k:
                count = n if expert_iteration else max(1, n // 2)
                new = collector.run(self.net, self._jobs(count, seed_base + 100_000 * k,
                                                         teacher=self.cfg.imitate, learner_acts=True))
                avg_jct, unfinished = _episode_quality(new)
                left = f" ({unfinished} tasks unfinished)" if unfinished else ""
                log(f"DAgger round {k}: learner avg JCT {avg_jct:.3f}{left}")
                writer.add_scalar("imitation/learner_avg_jct", avg_jct, k)
                episodes = episodes + new
            samples = build_samples(episodes, self.cfg.ppo.gamma, 1.0)  # values 0: Monte-Carlo returns
            if k == first:
                self.value_norm.update(np.array([s.ret for s in samples]))
            epochs = self.cfg.imitation_epochs if k == first else max(2, self.cfg.imitation_epochs // 3)
            self.net.train()
            losses = imitation_update(self.net, self.optimizer, samples, episodes, epochs,
                                      self.cfg.ppo.minibatch_rounds, rng, self.device, self.value_norm,
                                      self.cfg.acting.pointer)
            self.net.eval()
            for loss in losses:
                writer.add_scalar("imitation/nll", loss, step)
                step += 1
            log(f"imitation of {self.cfg.imitate} (round {k}): {len(samples)} decisions from {len(episodes)} "
                f"episodes, NLL {losses[0]:.3f} -> {losses[-1]:.3f}")
        self.imitation_done = True
        self.save()


def _fitting(own: dict[str, torch.Tensor], src: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of `src` that fit `own`, and input weights widened by the node-health columns
    (`envs.graph.NODE_FAULT_COLUMNS`, the last columns of their layouts) with zeros there."""
    out = {}
    extra = len(NODE_FAULT_COLUMNS["node"])
    for k, v in src.items():
        if k not in own:
            continue
        if own[k].shape == v.shape:
            out[k] = v
        elif (k.endswith(("inp.node.weight", "inp.cluster.weight")) and v.dim() == 2
              and tuple(own[k].shape) == (v.shape[0], v.shape[1] + extra)):
            out[k] = torch.cat([v, v.new_zeros(v.shape[0], extra)], dim=1)
    return out


def _optimizer(net: TapFingerNet, cfg: TrainConfig) -> torch.optim.Adam:
    """Adam; a separate critic is its own parameter group with --critic-lr (the critic has to
    track returns faster than the policy may move)."""
    if not net.cfg.separate_critic:
        return torch.optim.Adam(net.parameters(), lr=cfg.ppo.lr, eps=1e-5)
    groups = net.parameter_groups()
    return torch.optim.Adam([{"params": groups["actor"], "lr": cfg.ppo.lr},
                             {"params": groups["critic"], "lr": cfg.ppo.critic_lr or cfg.ppo.lr}], eps=1e-5)


def _log_iteration(writer, steps: int, episodes: list[Episode], stats: dict, collect_rate: float,
                   overall_rate: float, update_s: float) -> None:
    avg_jct, unfinished = _episode_quality(episodes)
    writer.add_scalar("charts/episodic_return", float(np.mean([e.episodic_return for e in episodes])), steps)
    writer.add_scalar("charts/avg_jct", avg_jct, steps)
    if unfinished:
        writer.add_scalar("charts/unfinished_tasks", unfinished, steps)
    if any(e.missed for e in episodes):  # deadline scenarios (the miss penalty charges these)
        writer.add_scalar("charts/deadline_misses", float(np.mean([e.missed for e in episodes])), steps)
    if any(e.declined for e in episodes):  # admission control (--decline): tasks declined per episode
        writer.add_scalar("charts/declined", float(np.mean([e.declined for e in episodes])), steps)
    writer.add_scalar("charts/rounds_per_s", collect_rate, steps)  # collection alone
    writer.add_scalar("charts/SPS", overall_rate, steps)  # collection + update
    writer.add_scalar("charts/updates_per_s", 1.0 / max(update_s, 1e-9), steps)
    writer.add_scalar("charts/ent_coef", stats["ent_coef"], steps)
    writer.add_scalar("charts/steps_per_decision", stats["steps_per_decision"], steps)
    for k, v in stats.items():
        if k not in ("ent_coef", "steps_per_decision"):
            writer.add_scalar(f"losses/{k}", v, steps)


def _episode_quality(episodes: list[Episode]) -> tuple[float, int]:
    """Mean avg JCT (finished tasks, as `tapfinger evaluate`) and the unfinished tasks in all."""
    return float(np.mean([e.avg_jct for e in episodes])), int(sum(e.unfinished for e in episodes))


