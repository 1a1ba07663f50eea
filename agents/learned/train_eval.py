"""The periodic evaluation of a training run: the network's greedy play on the evaluation seeds
against a heuristic on the same seeds, measured as `tapfinger evaluate` measures (through
`envs.episode`, not the evaluation harness), and which evaluation `best.pt` keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from agents.learned.acting import ActingOptions
from agents.learned.collect import EpisodeJob, collect_lockstep
from agents.learned.model import TapFingerNet
from tapfinger.sim.scenario import Scenario

if TYPE_CHECKING:  # the trainer imports this module
    from agents.learned.train import Trainer

EVAL_SEED_START = 900  # evaluation seeds during training; `tapfinger evaluate` defaults to >= 1000

@dataclass
class EvalResult:
    avg_jct: float  # mean over the seeds of each episode's avg JCT of finished tasks
    unfinished: int  # tasks left unfinished, all seeds together (never averaged in)
    deadline_ratio: float = float("nan")  # mean over the seeds (nan: no task has a deadline)

    def better_than(self, other: "EvalResult | None") -> bool:
        """On a deadline scenario more deadlines met is better (then a lower avg JCT); elsewhere a lower
        avg JCT. What `best.pt` keeps."""
        if other is None:
            return True
        if np.isfinite(self.deadline_ratio) and np.isfinite(other.deadline_ratio) \
                and self.deadline_ratio != other.deadline_ratio:
            return self.deadline_ratio > other.deadline_ratio
        return self.avg_jct < other.avg_jct


def evaluate_policy(scenario: Scenario, net: TapFingerNet, acting: ActingOptions, seeds: list[int],
                    device: str | torch.device = "cpu") -> EvalResult:
    """The network's greedy actions on `seeds` (in lockstep), measured as `tapfinger evaluate` measures."""
    was_training = net.training
    net.eval()
    episodes = collect_lockstep(scenario, net, acting, [EpisodeJob(s, deterministic=True) for s in seeds],
                                device=device)
    net.train(was_training)
    return EvalResult(float(np.mean([e.avg_jct for e in episodes])), sum(e.unfinished for e in episodes),
                      _mean_ratio([e.deadline_ratio for e in episodes]))


def _mean_ratio(ratios: list[float]) -> float:
    finite = [r for r in ratios if np.isfinite(r)]
    return float(np.mean(finite)) if finite else float("nan")


def heuristic_eval(scenario: Scenario, name: str, seeds: list[int]) -> EvalResult:
    """The heuristic `name` on `seeds`, measured as `evaluate_policy` measures the network."""
    from agents.registry import make_policy
    from envs.episode import run_episode

    pol = make_policy(name, scenario)
    results = [run_episode(scenario, pol, s) for s in seeds]
    return EvalResult(float(np.mean([r.avg_jct for r in results])), sum(r.unfinished for r in results),
                      _mean_ratio([r.deadline_ratio for r in results]))


def heuristic_avg_jct(scenario: Scenario, name: str, seeds: list[int]) -> float:
    return heuristic_eval(scenario, name, seeds).avg_jct


class PeriodicEvaluation:
    """The network's greedy play on the evaluation seeds against `eval_heuristic` on the same seeds
    (the heuristic's number is computed once per `train()`); keeps `best.pt`."""

    def __init__(self, trainer: Trainer, writer, bar):
        self.trainer, self.writer, self.bar = trainer, writer, bar
        self.seeds = list(range(EVAL_SEED_START, EVAL_SEED_START + trainer.cfg.eval_seeds))
        self.baseline: EvalResult | None = None

    def run(self) -> dict:
        t, cfg, writer = self.trainer, self.trainer.cfg, self.writer
        if self.baseline is None:
            self.baseline = heuristic_eval(t.scenario, cfg.eval_heuristic, self.seeds)
        ev = evaluate_policy(t.scenario, t.net, cfg.acting, self.seeds, t.device)
        writer.add_scalar("eval/avg_jct", ev.avg_jct, t.steps)
        writer.add_scalar(f"eval/avg_jct_{cfg.eval_heuristic}", self.baseline.avg_jct, t.steps)
        if ev.unfinished:
            writer.add_scalar("eval/unfinished_tasks", ev.unfinished, t.steps)
        deadlines = np.isfinite(ev.deadline_ratio)
        if deadlines:
            writer.add_scalar("eval/deadline_ratio", ev.deadline_ratio, t.steps)
            writer.add_scalar(f"eval/deadline_ratio_{cfg.eval_heuristic}", self.baseline.deadline_ratio, t.steps)
        past = [EvalResult(h["eval_avg_jct"], 0, h.get("eval_deadline_ratio", float("nan")))
                for h in t.history if "eval_avg_jct" in h]
        if all(ev.better_than(p) for p in past):
            t.save(t.run_dir / "best.pt")  # the best evaluation so far, for shipping
        shown = {"eval_jct": f"{ev.avg_jct:.3f}", cfg.eval_heuristic: f"{self.baseline.avg_jct:.3f}"}
        if deadlines:
            shown |= {"eval_met": f"{ev.deadline_ratio:.3f}", f"{cfg.eval_heuristic}_met": f"{self.baseline.deadline_ratio:.3f}"}
        self.bar.set_postfix(**shown)
        out = {"eval_avg_jct": ev.avg_jct, "eval_unfinished_tasks": ev.unfinished,
               f"eval_avg_jct_{cfg.eval_heuristic}": self.baseline.avg_jct}
        if deadlines:
            out |= {"eval_deadline_ratio": ev.deadline_ratio,
                    f"eval_deadline_ratio_{cfg.eval_heuristic}": self.baseline.deadline_ratio}
        return out
