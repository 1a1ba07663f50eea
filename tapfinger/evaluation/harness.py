"""The evaluation harness: every policy on the same seeds (common random numbers), in parallel
worker processes, summarised with 95% confidence intervals and paired differences.

`results.json` schema (README, "Evaluation results"):

    {
      "scenario": str, "seeds": [int, ...], "created": ISO time, "version": str,
      "best_heuristic": str,              # lowest mean avg JCT among the heuristics run
      "best_deadline_heuristic": str,     # only with deadline metrics: highest mean deadline ratio
      "policies": {
        NAME: {
          "avg_jct": {"mean", "ci95": [low, high], "per_seed": [one value per seed, seed order]},
          "p50_jct" | "p95_jct" | "p99_jct" | "makespan" | "decisions_per_s": same form,
          "utilisation": {RESOURCE: same form},
          "diff_vs_best": same form, per seed: this policy's avg JCT minus best_heuristic's,
          "invalid_actions": int, "unfinished_tasks": int, "truncated_episodes": int,
          # only when some episode of the evaluation has a deadline task or a declined task:
          "deadline_ratio": same form, per seed: tasks that met their deadline / tasks with one
                            (declined, late and unfinished ones missed it; null: none had one),
          "declined": same form, per seed: tasks declined (admission control),
          "lateness": same form, per seed: mean slots late (finish + 1 - deadline) of the tasks
                      that finished late (null: none did),
          "deadline_diff_vs_best": same form, per seed: this policy's deadline ratio minus that of
                                   best_deadline_heuristic (the heuristic with the highest mean ratio),
          # only with a fault model (Scenario.faults.active) or a fault met; metrics.fault_outcomes:
          "lost_work" | "restarts" | "failures" | "recovery": same form, per seed: progress lost to
              failures (whole tasks' work), task restarts, failure hits, mean slots to restart
        },
        "bound": {"avg_jct": same form}   # per-task lower bound (tapfinger/evaluation/bounds.py)
      },
      "nulls": {"why": str, "fields": [path, ...]}   # only when a value is null, see write_results
    }

A value that is not a finite number (NaN: nothing to measure, e.g. the JCT of an episode without a
finished task; infinity: decisions/s of decisions that took no measurable time) is written as
null, which strict JSON parsers accept, and its path is listed under "nulls".

With `EvalConfig.cache` (the CLI's `OUT/episodes.partial.jsonl`, `episode_cache.py`) each episode
is saved as it finishes: Ctrl-C keeps them, and the same evaluation run again runs only the rest.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from agents.worker_signals import quiet_worker_signals
from tapfinger import __version__
from tapfinger.evaluation.episode_cache import EpisodeCache, job_key
from tapfinger.evaluation.metrics import EpisodeMetrics, episode_metrics, fault_entry, summary
from tapfinger.evaluation.ray_backend import backend_runner  # imports Ray only when a backend needs it
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
    cache: EpisodeCache | None = None  # where finished episodes are kept (None: nowhere)
    backend: str = "local"  # local: the process pool below; ray: Ray tasks (ray_backend.py), the same episodes
    ray_address: str | None = None  # with ray: a running cluster's address (None: Ray is started here)


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


# Policies built in this process, reused across episodes (a checkpoint loads once; `reset(seed)` makes
# episodes independent). Keyed by the scenario itself: two scenarios may share a name, not content.
_policy_cache: dict[tuple, tuple[Policy, list]] = {}  # -> (policy, its construction warnings)


def _cached_policy(scenario: Scenario, name: str, seed: int, options: dict) -> Policy:
    from agents.registry import make_policy

    key = (scenario, name, repr(sorted(options.items())))
    entry = _policy_cache.get(key)
    if entry is None:
        with warnings.catch_warnings(record=True) as said:
            policy = make_policy(name, scenario, seed=seed, **options)
        entry = _policy_cache[key] = (policy, [(w.category, str(w.message)) for w in said])
    # What building the policy warned about (e.g. a model it could not fit) applies to every
    # episode it plays: said again on each, and shown once per evaluation by `run_evaluation`.
    for category, message in entry[1]:
        warnings.warn(message, category, stacklevel=2)
    return entry[0]


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
    # A worker: one BLAS/OpenMP thread from here on, quiet on Ctrl-C and SIGTERM (worker_signals.py).
    quiet_worker_signals()
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored while worker processes are forked, so that they inherit the ignoring from
    the start (a Ctrl-C before their initializer ran would print a traceback from each)."""
    try:
        before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: Ctrl-C is not delivered here anyway
        before = None
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGINT, before)


def _run_job_caught(job: tuple) -> tuple[tuple[str, EpisodeMetrics, float], list]:
    """`_run_job`, with the warnings it raised returned (category, text) instead of printed, so
    that the main process shows each once rather than once per worker and episode."""
    with warnings.catch_warnings(record=True) as said:
        out = _run_job(job)
    return out, [(w.category, str(w.message)) for w in said]


def _run_jobs(jobs: list[tuple], workers: int, on_result, run_one=None) -> None:
    """Run `jobs` in at most `workers` processes (never more than there are jobs), calling
    `on_result(index, result, warnings)` in the main process as each finishes. On Ctrl-C the
    workers are terminated (never left running) and KeyboardInterrupt propagates. `run_one(job)` ->
    (result, warnings): the edge episode by default, the geo harness's own (module-level: picklable)."""
    run_one = run_one or _run_job_caught
    workers = min(workers, len(jobs))
    if workers > 1:
        with _sigint_ignored():
            pool = mp.get_context("fork").Pool(workers, initializer=_init_worker)
        try:
            for i, (out, said) in pool.imap_unordered(functools.partial(_indexed, run_one), enumerate(jobs)):
                on_result(i, out, said)
        finally:
            pool.terminate()
            pool.join()
        return
    try:  # in-process: the caller's environment is left alone, its torch thread count restored
        for i, job in enumerate(jobs):
            on_result(i, *run_one(job))
    finally:
        _threads.restore()


def _indexed(run_one, item: tuple[int, tuple]) -> tuple[int, tuple]:
    i, job = item
    return i, run_one(job)


def run_evaluation(cfg: EvalConfig) -> dict:
    jobs = [(cfg.scenario, name, seed, cfg.policy_options.get(name, {}))
            for name in cfg.policies for seed in cfg.seeds]
    keys = [job_key(*job) for job in jobs] if cfg.cache is not None else []
    per_policy: dict[str, dict[int, EpisodeMetrics]] = {n: {} for n in cfg.policies}
    bounds: dict[int, float] = {}
    kept = cfg.cache.load(set(keys)) if cfg.cache is not None else {}
    for name, m, b in kept.values():
        per_policy[name][m.seed], bounds[m.seed] = m, b
    todo = [i for i in range(len(jobs)) if not keys or keys[i] not in kept]
    if kept:
        print(f"resumed {len(kept)} of {len(jobs)} episodes from {cfg.cache.path}", file=sys.stderr)
    bar = tqdm(total=len(jobs), initial=len(kept), desc=f"evaluate {cfg.scenario.name}", unit="episode",
               disable=not cfg.progress)
    shown: set[tuple] = set()

    def on_result(j: int, out: tuple[str, EpisodeMetrics, float], said: list) -> None:
        name, m, b = out
        if cfg.cache is not None:
            cfg.cache.append(keys[todo[j]], name, m, b)
        per_policy[name][m.seed], bounds[m.seed] = m, b
        for category, message in said:
            if (category, message) not in shown:
                shown.add((category, message))
                warnings.warn(message, category, stacklevel=2)
        bar.update()

    try:
        run = _run_jobs if cfg.backend == "local" else backend_runner(cfg.backend, cfg.ray_address)
        run([jobs[i] for i in todo], cfg.workers, on_result)
    except KeyboardInterrupt:
        bar.close()
        if cfg.cache is None:
            raise
        done = len(cfg.cache.load(set(keys)))  # what a rerun will find, counted on disk
        raise KeyboardInterrupt(f"kept {done} of {len(jobs)} episodes in {cfg.cache.path}; "
                                f"rerun the same command to finish") from None
    bar.close()
    return summarise(cfg, per_policy, bounds)


def summarise(cfg: EvalConfig, per_policy: dict[str, dict[int, EpisodeMetrics]], bounds: dict[int, float]) -> dict:
    seeds = cfg.seeds
    out: dict = {"scenario": cfg.scenario.name, "seeds": list(seeds),
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "version": __version__, "policies": {}}
    avg = {n: np.array([per_policy[n][s].avg_jct for s in seeds]) for n in cfg.policies}
    heuristics = [n for n in cfg.policies if is_heuristic(n)]
    # A heuristic none of whose episodes finished a task has no avg JCT: it is never the best.
    measured = [n for n in heuristics if np.isfinite(avg[n]).any()]
    best = min(measured, key=lambda n: float(np.mean(avg[n][np.isfinite(avg[n])]))) if measured else None
    out["best_heuristic"] = best
    # Deadline metrics for every policy, or for none: a scenario without deadlines (and no
    # declines) keeps exactly the keys it always had, so older results stay comparable.
    deadlines = any(per_policy[n][s].has_deadlines for n in cfg.policies for s in seeds)
    ratio = {n: np.array([per_policy[n][s].deadline_ratio for s in seeds]) for n in cfg.policies}
    rated = [n for n in heuristics if np.isfinite(ratio[n]).any()]
    best_dl = max(rated, key=lambda n: float(np.nanmean(ratio[n]))) if deadlines and rated else None
    if deadlines:
        out["best_deadline_heuristic"] = best_dl
    # Fault metrics likewise: for every policy when the scenario has a fault model (or, for
    # episodes from elsewhere, when one met a fault); a scenario without faults keeps its keys.
    faults = (bool(getattr(getattr(cfg.scenario, "faults", None), "active", False))
              or any(per_policy[n][s].has_faults for n in cfg.policies for s in seeds))
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
        if deadlines:
            entry["deadline_ratio"] = summary([e.deadline_ratio for e in eps])
            entry["declined"] = summary([float(e.declined) for e in eps])
            entry["lateness"] = summary([e.lateness for e in eps])
            if best_dl is not None:  # paired over seeds, as diff_vs_best is for avg JCT
                entry["deadline_diff_vs_best"] = summary(ratio[n] - ratio[best_dl])
        if faults:
            entry.update(fault_entry(eps))
        out["policies"][n] = entry
    out["policies"]["bound"] = {"avg_jct": summary([bounds[s] for s in seeds])}
    out["_episodes"] = per_policy  # for plots; not written to JSON
    return out


NULLS_WHY = ("null stands for a value that is not a finite number, which strict JSON cannot hold: NaN "
             "where there was nothing to measure (an episode in which no task finished has no JCT, so no "
             "percentiles and no difference from the best heuristic; a mean over no finite values), or "
             "infinity (decisions/s of an episode whose decisions took no measurable time); the deadline "
             "ratio of an episode in which no task had a deadline, the lateness of one in which no task "
             "finished late and the recovery time of one in which no finished task was hit by a failure "
             "are NaN too")


def _strict(value, path: str, nulls: list[str]):
    """`value` with every non-finite float replaced by None, the paths of those in `nulls`."""
    if isinstance(value, dict):
        return {k: _strict(v, f"{path}.{k}" if path else str(k), nulls) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v, f"{path}[{i}]", nulls) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        nulls.append(path)
        return None
    return value


def write_results(results: dict, out_dir: Path) -> Path:
    """OUT/results.json, strict JSON (see the module docstring), replaced in one step: a reader
    sees the old file or the new one, and a failed write leaves no temporary file behind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "results.json"
    nulls: list[str] = []
    clean = _strict({k: v for k, v in results.items() if not k.startswith("_")}, "", nulls)
    if nulls:
        clean["nulls"] = {"why": NULLS_WHY, "fields": nulls}
    tmp = out_dir / f".results.json.{os.getpid()}.tmp"  # created with the usual permissions
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(clean, indent=2, allow_nan=False))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    return path


def _fmt(s: dict, digits: int = 2) -> str:
    return f"{s['mean']:.{digits}f}"


def _deadline_cells(e: dict) -> str:
    """The deadline columns of one row: met % with its CI, declined per episode, mean slots late."""
    r, d, late = e["deadline_ratio"], e["declined"], e["lateness"]
    met = (f"{100 * r['mean']:.1f} [{100 * r['ci95'][0]:.1f}, {100 * r['ci95'][1]:.1f}]"
           if math.isfinite(r["mean"]) else "-")
    by = f"{late['mean']:.1f}" if math.isfinite(late["mean"]) else "-"
    return f" {met:<20} {d['mean']:>8.1f} {by:>7}"


def _fault_cells(e: dict) -> str:
    """The fault columns of one row: work lost and restarts, per episode."""
    return f" {e['lost_work']['mean']:>9.2f} {e['restarts']['mean']:>8.1f}"


def format_table(results: dict) -> str:
    """A plain-text table: one row per policy (by avg JCT), bound last; with deadline columns when
    the results have deadline metrics, and fault columns when they have fault metrics."""
    res = results["policies"]
    resources = next(iter(v["utilisation"] for k, v in res.items() if k != "bound")).keys()
    deadlines = any("deadline_ratio" in v for k, v in res.items() if k != "bound")
    faults = any("lost_work" in v for k, v in res.items() if k != "bound")
    head = (f"{'policy':<16} {'avg JCT (95% CI)':<22}"
            + (f" {'deadline % (95% CI)':<20} {'declined':>8} {'late by':>7}" if deadlines else "")
            + (f" {'lost work':>9} {'restarts':>8}" if faults else "")
            + f" {'p50':>6} {'p95':>6} {'p99':>6} {'makespan':>9} "
            + " ".join(f"{'util ' + r:>9}" for r in resources)
            + f" {'dec/s':>9} {'diff vs ' + str(results['best_heuristic']):>26}")
    title = (f"scenario {results['scenario']}, {len(results['seeds'])} seeds "
             f"({results['seeds'][0]}..{results['seeds'][-1]}); JCT in slots")
    if deadlines:
        title += ("; deadline % = met / tasks with a deadline (declined, late, unfinished = missed), "
                  "declined per episode, late by = mean slots late of the late tasks")
    if faults:
        title += "; lost work = tasks' worth of progress lost to failures per episode, restarts per episode"
    lines = [title, head, "-" * len(head)]
    order = sorted((n for n in res if n != "bound"), key=lambda n: res[n]["avg_jct"]["mean"])
    for n in order:
        e = res[n]
        a = e["avg_jct"]
        ci = f"{a['mean']:.2f} [{a['ci95'][0]:.2f}, {a['ci95'][1]:.2f}]"
        d = e.get("diff_vs_best")
        diff = f"{d['mean']:+.2f} [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]" if d else "-"
        util = " ".join(f"{e['utilisation'][r]['mean']:>9.2f}" for r in resources)
        flag = "" if not e["unfinished_tasks"] else f"  ({e['unfinished_tasks']} tasks unfinished)"
        cells = (_deadline_cells(e) if deadlines else "") + (_fault_cells(e) if faults else "")
        lines.append(f"{n:<16} {ci:<22}{cells} {_fmt(e['p50_jct'], 1):>6} {_fmt(e['p95_jct'], 1):>6} "
                     f"{_fmt(e['p99_jct'], 1):>6} {_fmt(e['makespan'], 0):>9} {util} "
                     f"{e['decisions_per_s']['mean']:>9.0f} {diff:>26}{flag}")
    b = res["bound"]["avg_jct"]
    lines.append(f"{'bound':<16} {b['mean']:.2f} [{b['ci95'][0]:.2f}, {b['ci95'][1]:.2f}]   "
                 f"(each task alone on its best cluster: no policy can do better)")
    return "\n".join(lines)
