"""The evaluation harness: every policy on the same seeds (common random numbers), in parallel
worker processes, summarised with 95% confidence intervals and paired differences.

`results.json` schema (README, "Evaluation results"):

    {
      "scenario": str, "seeds": [int, ...], "created": ISO time, "version": str,
      "best_heuristic": str,              # lowest mean avg JCT among the heuristics run
      "policies": {
        NAME: {
          "avg_jct": {"mean", "ci95": [low, high], "per_seed": [one value per seed, seed order]},
          "p50_jct" | "p95_jct" | "p99_jct" | "makespan" | "decisions_per_s": same form,
          "utilisation": {RESOURCE: same form},
          "diff_vs_best": same form, per seed: this policy's avg JCT minus best_heuristic's,
          "invalid_actions": int, "unfinished_tasks": int, "truncated_episodes": int
        },
        "bound": {"avg_jct": same form}   # per-task lower bound (tapfinger/evaluation/bounds.py)
      }
    }
"""

from __future__ import annotations

import datetime as _dt
import json
import multiprocessing as mp
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from tapfinger import __version__
from tapfinger.evaluation.metrics import EpisodeMetrics, episode_metrics, summary
from tapfinger.sim.scenario import Scenario

if TYPE_CHECKING:
    from agents.base import Policy


def is_heuristic(name: str) -> bool:
    """Whether a policy name builds a heuristic (its class says so; learned classes import torch)."""
    from agents.registry import policy_class

    return not policy_class(name).learned


@dataclass
class EvalConfig:
    scenario: Scenario
    policies: list[str]
    seeds: list[int]
    workers: int = 1
    policy_options: dict[str, dict] = field(default_factory=dict)  # name -> kwargs (e.g. checkpoint)
    progress: bool = True


def _run_job(job: tuple[Scenario, str, int, dict]) -> tuple[str, EpisodeMetrics, float]:
    # Worker processes import lazily: a heuristic-only evaluation never imports torch.
    from tapfinger.evaluation.bounds import lower_bound
    from tapfinger.sim.engine import Engine
    from envs.episode import run_episode

    scenario, name, seed, options = job
    policy = _cached_policy(scenario, name, seed, options)
    _threads.limit()  # after building the policy: that may be what imported torch
    engine = Engine(scenario)
    result = run_episode(scenario, policy, seed, engine=engine)
    metrics = episode_metrics(result, scenario.resources, engine.static.node_capacity.sum(axis=0))
    bound = float(lower_bound(scenario, engine.workload)[1])
    return name, metrics, bound


# Policies built in this process, reused across episodes (a learned one loads its checkpoint once;
# `reset(seed)` makes each episode independent of the previous ones). Keyed by the scenario
# itself, not its name: two scenarios may share a name and differ in what a policy depends on.
_policy_cache: dict[tuple, Policy] = {}


def _cached_policy(scenario: Scenario, name: str, seed: int, options: dict) -> Policy:
    from agents.registry import make_policy

    key = (scenario, name, repr(sorted(options.items())))
    policy = _policy_cache.get(key)
    if policy is None:
        policy = make_policy(name, scenario, seed=seed, **options)
        _policy_cache[key] = policy
    return policy


class _TorchThreads:
    """One torch thread while evaluating (the workers are the parallelism, and in-process torch's
    threads contend on a small machine), and the count torch had before back afterwards.

    Torch is never imported for this (a heuristic-only evaluation must not import it): the limit
    applies once a policy has imported it, and the count torch had then is what `restore` puts back.
    """

    def __init__(self) -> None:
        self.saved: int | None = None

    def limit(self) -> None:
        torch = sys.modules.get("torch")
        if torch is None:
            return
        if self.saved is None:
            self.saved = torch.get_num_threads()
        torch.set_num_threads(1)

    def restore(self) -> None:
        if self.saved is not None:
            sys.modules["torch"].set_num_threads(self.saved)
            self.saved = None


_threads = _TorchThreads()


def _init_worker() -> None:
    # A worker process: one BLAS/OpenMP thread for anything loaded from here on.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def run_evaluation(cfg: EvalConfig) -> dict:
    jobs = [(cfg.scenario, name, seed, cfg.policy_options.get(name, {}))
            for name in cfg.policies for seed in cfg.seeds]
    per_policy: dict[str, dict[int, EpisodeMetrics]] = {n: {} for n in cfg.policies}
    bounds: dict[int, float] = {}
    bar = tqdm(total=len(jobs), desc=f"evaluate {cfg.scenario.name}", unit="episode", disable=not cfg.progress)
    if cfg.workers > 1:
        ctx = mp.get_context("fork")
        with ctx.Pool(cfg.workers, initializer=_init_worker) as pool:
            for name, m, b in pool.imap_unordered(_run_job, jobs):
                per_policy[name][m.seed] = m
                bounds[m.seed] = b
                bar.update()
    else:
        try:  # in-process: the caller's environment is left alone, its torch thread count restored
            for job in jobs:
                name, m, b = _run_job(job)
                per_policy[name][m.seed] = m
                bounds[m.seed] = b
                bar.update()
        finally:
            _threads.restore()
    bar.close()
    return summarise(cfg, per_policy, bounds)


def summarise(cfg: EvalConfig, per_policy: dict[str, dict[int, EpisodeMetrics]], bounds: dict[int, float]) -> dict:
    seeds = cfg.seeds
    out: dict = {"scenario": cfg.scenario.name, "seeds": list(seeds),
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "version": __version__, "policies": {}}
    avg = {n: np.array([per_policy[n][s].avg_jct for s in seeds]) for n in cfg.policies}
    heuristics = [n for n in cfg.policies if is_heuristic(n)]
    best = min(heuristics, key=lambda n: np.nanmean(avg[n])) if heuristics else None
    out["best_heuristic"] = best
    for n in cfg.policies:
        eps = [per_policy[n][s] for s in seeds]
        entry = {k: summary([e.scalars()[k] for e in eps])
                 for k in ("avg_jct", "p50_jct", "p95_jct", "p99_jct", "makespan", "decisions_per_s")}
        entry["utilisation"] = {r: summary([e.utilisation[r] for e in eps]) for r in cfg.scenario.resources}
        if best is not None:
            entry["diff_vs_best"] = summary(avg[n] - avg[best])
        entry["invalid_actions"] = int(sum(e.invalid_actions for e in eps))
        entry["unfinished_tasks"] = int(sum(e.unfinished for e in eps))
        entry["truncated_episodes"] = int(sum(e.truncated for e in eps))
        out["policies"][n] = entry
    out["policies"]["bound"] = {"avg_jct": summary([bounds[s] for s in seeds])}
    out["_episodes"] = per_policy  # for plots; not written to JSON
    return out


def write_results(results: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    clean = {k: v for k, v in results.items() if not k.startswith("_")}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(clean, indent=2))
    tmp.replace(path)
    return path


def _fmt(s: dict, digits: int = 2) -> str:
    return f"{s['mean']:.{digits}f}"


def format_table(results: dict) -> str:
    """A plain-text table: one row per policy, bound last."""
    res = results["policies"]
    resources = next(iter(v["utilisation"] for k, v in res.items() if k != "bound")).keys()
    head = (f"{'policy':<16} {'avg JCT (95% CI)':<22} {'p50':>6} {'p95':>6} {'p99':>6} {'makespan':>9} "
            + " ".join(f"{'util ' + r:>9}" for r in resources)
            + f" {'dec/s':>9} {'diff vs ' + str(results['best_heuristic']):>26}")
    lines = [f"scenario {results['scenario']}, {len(results['seeds'])} seeds "
             f"({results['seeds'][0]}..{results['seeds'][-1]}); JCT in slots", head, "-" * len(head)]
    order = sorted((n for n in res if n != "bound"), key=lambda n: res[n]["avg_jct"]["mean"])
    for n in order:
        e = res[n]
        a = e["avg_jct"]
        ci = f"{a['mean']:.2f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]"
        d = e.get("diff_vs_best")
        diff = f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d else "-"
        util = " ".join(f"{e['utilisation'][r]['mean']:>9.2f}" for r in resources)
        flag = "" if not e["unfinished_tasks"] else f"  ({e['unfinished_tasks']} tasks unfinished)"
        lines.append(f"{n:<16} {ci:<22} {_fmt(e['p50_jct'], 1):>6} {_fmt(e['p95_jct'], 1):>6} "
                     f"{_fmt(e['p99_jct'], 1):>6} {_fmt(e['makespan'], 0):>9} {util} "
                     f"{e['decisions_per_s']['mean']:>9.0f} {diff:>26}{flag}")
    b = res["bound"]["avg_jct"]
    lines.append(f"{'bound':<16} {b['mean']:.2f} [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}]   "
                 f"(each task alone on its best cluster: no policy can do better)")
    return "\n".join(lines)
