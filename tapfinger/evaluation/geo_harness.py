"""The evaluation of geo schedulers (issue 16): every policy on the same seeds (common random
numbers: the jobs of a seed are `draw_jobs(scenario, seed)`, the same for every policy), episodes
in worker processes, summarised with Student-t 95% confidence intervals and paired differences.

`results.json` schema (what `evaluate_geo` writes into `out`):

    {
      "scenario": str, "family": "geo", "sites": int, "jobs": int (per episode),
      "scenario_digest": str,            # sha256 of the scenario as loaded: which exact system and ranges
      "seeds": [int, ...], "created": ISO time, "version": str,
      "best_heuristic": str | null,      # lowest mean total cost among the policies that are not learned
      "policies": {
        NAME: {
          "total_cost": {"mean", "ci95": [low, high], "per_seed": [one value per seed, seed order]},
          "latency_cost" | "transfer_cost" | "exchange_cost": same form (the three parts of total_cost),
          "mb_moved": same form (MB of data blocks moved between sites),
          "avg_jct": same form (slots, over the finished jobs of an episode),
          "unfinished": same form (jobs not finished when an episode reached max_slots),
          "decisions_per_second": same form (slots decided per second of the policy's decide time),
          "diff_vs_best": same form, per seed: this policy's total cost minus best_heuristic's,
          "learned": bool, "truncated_episodes": int
        }
      },
      "nulls": {"why": str, "fields": [path, ...]}   # only when a value is null (harness.write_results)
    }

With `out`, every finished episode is appended to `OUT/episodes.partial.jsonl` as it finishes (the
edge harness's cache file and format of line; a geo record's key differs from every edge one): a
Ctrl-C keeps them, and the same evaluation run again runs only the missing ones. The file is
removed once results.json is written.
"""

from __future__ import annotations

import dataclasses
import functools
import datetime as _dt
import hashlib
import importlib
import json
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from envs.geo_episode import GeoEpisodeResult, run_geo_episode
from tapfinger import __version__
from tapfinger.evaluation.episode_cache import CACHE_NAME, EpisodeCache
from tapfinger.evaluation.harness import _run_jobs, _threads, write_results
from tapfinger.evaluation.metrics import summary
from tapfinger.sim.geo.model import GeoScenario
from tapfinger.sim.geo.scenario import load_geo_scenario

# The per-seed metrics of results.json, each in the summary form (see the module docstring).
GEO_METRICS = ("total_cost", "latency_cost", "transfer_cost", "exchange_cost", "mb_moved", "avg_jct",
               "unfinished", "decisions_per_second")
GEO_CACHE_FORMAT = 1
PolicySpec = Sequence[str] | Mapping[str, Callable]


# ---------------------------------------------------------------------------- the policies
def _registry():
    """agents.geo.registry, imported only when a named geo policy is asked for."""
    try:
        return importlib.import_module("agents.geo.registry")
    except ModuleNotFoundError as exc:
        if exc.name != "agents.geo.registry":
            raise  # the registry exists and failed to import something of its own
        return None


def geo_policy_names() -> list[str]:
    """Every registered geo policy name (none while agents/geo/registry.py does not exist)."""
    reg = _registry()
    return list(reg.geo_policy_names()) if reg is not None else []


def default_geo_policies(scenario_name: str | None = None, checkpoint: str | Path | None = None) -> list[str]:
    """What `tapfinger evaluate` runs on a geo scenario: the heuristics of GEO_POLICY_NAMES in their
    order, then the other registered geo policies; a learned one only where it has a checkpoint
    (`checkpoint`, or the one shipped for `scenario_name`), so a bare evaluation of a scenario
    without a shipped policy (geo-50) runs the heuristics rather than failing; the slow ones
    (`SLOW_GEO_POLICIES`, okita-rollout) only when named."""
    reg = _registry()
    if reg is None:
        return []
    first = list(reg.GEO_POLICY_NAMES)
    has_checkpoint = checkpoint is not None or (
        scenario_name is not None and reg.shipped_geo_checkpoint(scenario_name).is_file())
    return first + [n for n in reg.geo_policy_names() if n not in first and n not in reg.SLOW_GEO_POLICIES
                    and (n not in reg.LEARNED_GEO_POLICIES or has_checkpoint)]


def check_geo_policies(names: Sequence[str]) -> None:
    """Before any episode: every name is a registered geo policy, each named once."""
    known = geo_policy_names()
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ValueError(f"--policies names {twice!r} twice. Fix: name each policy once")
    for n in names:
        if n not in known:
            listed = ", ".join(known) if known else "none (agents/geo/registry.py is missing)"
            raise ValueError(f"unknown geo policy {n!r}. Fix: use one of the geo policies: {listed}")


def _factories(policies: PolicySpec) -> dict[str, Callable | None]:
    """name -> a zero-argument factory of the policy, or None: the registry builds it by name."""
    if isinstance(policies, Mapping):
        return dict(policies)
    names = [policies] if isinstance(policies, str) else list(policies)
    check_geo_policies(names)
    return {n: None for n in names}


# Policies built in this process, reused across episodes (`reset(scenario, seed)` makes each episode
# independent of the previous ones, as the edge harness's `_policy_cache` does).
_geo_policy_cache: dict[tuple, object] = {}


def made_by(factory: Callable | None) -> str | None:
    """A stable description of a factory (None: the registry's), the same in every process and run:
    what keys the policy cache and the episode cache (a partial is described by its arguments)."""
    if factory is None:
        return None
    if isinstance(factory, functools.partial):
        return f"{made_by(factory.func)}{factory.args!r}{sorted(factory.keywords.items())!r}"
    return f"{factory.__module__}.{getattr(factory, '__qualname__', factory)}"


def _cached_geo_policy(scenario: GeoScenario, name: str, factory: Callable | None):
    key = (scenario, name, made_by(factory))
    if key not in _geo_policy_cache:
        if factory is None:
            _geo_policy_cache[key] = _registry().make_geo_policy(name)
        else:
            _geo_policy_cache[key] = factory()
    return _geo_policy_cache[key]


# ---------------------------------------------------------------------------- episodes
def _run_geo_job(job: tuple) -> tuple[tuple[str, GeoEpisodeResult, bool], list]:
    """One episode, with the warnings it raised returned (category, text) for the main process to
    show once (harness._run_job_caught does the same for the edge)."""
    scenario, name, factory, seed = job
    with warnings.catch_warnings(record=True) as said:
        policy = _cached_geo_policy(scenario, name, factory)
        _threads.limit()  # after building the policy: that may be what imported torch
        result = run_geo_episode(scenario, policy, seed)
    return (name, result, bool(getattr(policy, "learned", False))), [(w.category, str(w.message)) for w in said]


# ---------------------------------------------------------------------------- the cache
def scenario_digest(scenario: GeoScenario) -> str:
    return hashlib.sha256(repr(scenario).encode()).hexdigest()


def geo_job_key(scenario: GeoScenario, name: str, factory: Callable | None, seed: int) -> str:
    """What one geo episode depends on, hashed: the scenario, the policy (with its checkpoint's
    content, so a retrained file is never served from an older run's episodes), the seed, the version."""
    spec = ["geo", GEO_CACHE_FORMAT, __version__, repr(scenario), name, made_by(factory), int(seed),
            _checkpoint_digest(scenario, name, factory)]
    return hashlib.sha256(json.dumps(spec, default=str).encode()).hexdigest()


def _checkpoint_digest(scenario: GeoScenario, name: str, factory: Callable | None) -> str | None:
    """sha256 of the file a learned geo policy will load (None for the heuristics, or no file)."""
    reg = _registry()
    if reg is None or name not in reg.LEARNED_GEO_POLICIES:
        return None
    given = factory.keywords.get("checkpoint") if isinstance(factory, functools.partial) else None
    path = Path(given) if given is not None else reg.shipped_geo_checkpoint(scenario.name)
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


class GeoEpisodeCache(EpisodeCache):
    """The edge cache's file and line discipline (`episode_cache.py`), holding geo episodes."""

    def load_geo(self, keys: set[str]) -> dict[str, tuple[str, GeoEpisodeResult, bool]]:
        out = {}
        for rec in self.load_all():
            if rec["key"] not in keys:
                continue
            try:
                out[rec["key"]] = (rec["policy"], GeoEpisodeResult(**rec["geo"]), bool(rec["learned"]))
            except (KeyError, TypeError, ValueError):
                continue  # a record of another format: the episode is run again
        return out

    def append_geo(self, key: str, name: str, result: GeoEpisodeResult, learned: bool) -> None:
        record = {"key": key, "policy": name, "seed": int(result.seed), "learned": learned,
                  "geo": dataclasses.asdict(result)}
        self.write_record(record)


# ---------------------------------------------------------------------------- the evaluation
def _check_seeds(seeds: Sequence[int], workers: int) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds {seeds!r}: need at least one seed, each >= 0 and given once. Fix: pass "
                         f"distinct non-negative seeds")
    if workers < 1:
        raise ValueError(f"workers {workers}: at least 1 worker process is needed. Fix: pass 1 or more")
    return seeds


def evaluate_geo(scenario: GeoScenario | str | Path, policies: PolicySpec, seeds: Sequence[int], workers: int = 1,
                 out: Path | str | None = None, progress: bool = True) -> dict:
    """Every policy on every seed; the results (module docstring) and, with `out`, OUT/results.json.

    `policies`: registered geo policy names, or a mapping name -> zero-argument factory of a
    `agents.geo.base.GeoPolicy` (policies that are not registered: tests, studies)."""
    sc = scenario if isinstance(scenario, GeoScenario) else load_geo_scenario(scenario)
    seeds = _check_seeds(seeds, workers)
    factories = _factories(policies)  # unknown names refused before any episode runs
    jobs = [(sc, n, f, s) for n, f in factories.items() for s in seeds]
    cache = GeoEpisodeCache(Path(out) / CACHE_NAME) if out is not None else None
    if cache is not None:
        cache.path.parent.mkdir(parents=True, exist_ok=True)
    keys = [geo_job_key(*job) for job in jobs] if cache is not None else []
    kept = cache.load_geo(set(keys)) if cache is not None else {}
    episodes: dict[str, dict[int, GeoEpisodeResult]] = {n: {} for n in factories}
    learned: dict[str, bool] = {}
    for name, result, is_learned in kept.values():
        episodes[name][result.seed], learned[name] = result, is_learned
    todo = [i for i in range(len(jobs)) if not keys or keys[i] not in kept]
    if kept:
        print(f"resumed {len(kept)} of {len(jobs)} episodes from {cache.path}", file=sys.stderr)
    _play(jobs, todo, keys, cache, workers, progress, sc.name, episodes, learned, len(kept))
    results = summarise_geo(sc, seeds, episodes, learned)
    if out is not None:
        write_results(results, Path(out))
        cache.remove()
    return results


def _play(jobs, todo, keys, cache, workers, progress, label, episodes, learned, initial) -> None:
    """Run the jobs `todo`, filling `episodes` and `learned` (and the cache) as each finishes."""
    bar = tqdm(total=len(jobs), initial=initial, desc=f"evaluate {label}", unit="episode",
               disable=not progress, leave=False)
    shown: set[tuple] = set()

    def on_result(j: int, out: tuple[str, GeoEpisodeResult, bool], said: list) -> None:
        name, result, is_learned = out
        if cache is not None:
            cache.append_geo(keys[todo[j]], name, result, is_learned)
        episodes[name][result.seed], learned[name] = result, is_learned
        for category, message in said:
            if (category, message) not in shown:
                shown.add((category, message))
                warnings.warn(message, category, stacklevel=2)
        bar.update()

    try:
        _run_jobs([jobs[i] for i in todo], workers, on_result, run_one=_run_geo_job)
    except KeyboardInterrupt:
        bar.close()
        if cache is None:
            raise
        done = len(cache.load_geo(set(keys)))  # what a rerun will find, counted on disk
        raise KeyboardInterrupt(f"kept {done} of {len(jobs)} episodes in {cache.path}; "
                                f"rerun the same command to finish") from None
    bar.close()


def _per_seed(e: GeoEpisodeResult) -> dict[str, float]:
    rate = e.slots / e.decide_seconds if e.decide_seconds > 0 else float("inf")
    return {"total_cost": e.total_cost, "latency_cost": e.latency_cost, "transfer_cost": e.transfer_cost,
            "exchange_cost": e.exchange_cost, "mb_moved": e.mb_moved, "avg_jct": e.avg_jct,
            "unfinished": float(e.unfinished), "decisions_per_second": rate}


def summarise_geo(scenario: GeoScenario, seeds: list[int], episodes: dict[str, dict[int, GeoEpisodeResult]],
                  learned: dict[str, bool]) -> dict:
    out: dict = {"scenario": scenario.name, "family": "geo", "sites": scenario.num_sites,
                 "jobs": scenario.jobs.count, "scenario_digest": scenario_digest(scenario), "seeds": list(seeds),
                 "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                 "version": __version__, "policies": {}}
    total = {n: np.array([episodes[n][s].total_cost for s in seeds]) for n in episodes}
    heuristics = [n for n in episodes if not learned.get(n, False)]
    best = min(heuristics, key=lambda n: float(total[n].mean())) if heuristics else None
    out["best_heuristic"] = best
    for n in episodes:
        rows = [_per_seed(episodes[n][s]) for s in seeds]
        entry = {k: summary([r[k] for r in rows]) for k in GEO_METRICS}
        if best is not None:  # paired over seeds: the same jobs in both episodes of a seed
            entry["diff_vs_best"] = summary(total[n] - total[best])
        entry["learned"] = bool(learned.get(n, False))
        entry["truncated_episodes"] = int(sum(episodes[n][s].truncated for s in seeds))
        out["policies"][n] = entry
    out["_episodes"] = episodes  # for plots and tests; not written to JSON
    return out


# ---------------------------------------------------------------------------- the table
def _ci(s: dict, digits: int = 1, sign: str = "") -> str:
    if not np.isfinite(s["mean"]):
        return "-"
    lo, hi = s["ci95"]
    return f"{s['mean']:{sign}.{digits}f} [{lo:{sign}.{digits}f}, {hi:{sign}.{digits}f}]"


def format_geo_table(results: dict) -> str:
    """A markdown table: one row per policy, lowest mean total cost first."""
    res, best = results["policies"], results["best_heuristic"]
    seeds = results["seeds"]
    title = (f"scenario {results['scenario']} ({results['sites']} sites, {results['jobs']} jobs), "
             f"{len(seeds)} seeds ({seeds[0]}..{seeds[-1]}); costs per episode, means with 95% CIs; "
             f"JCT in slots; diff = paired difference of total cost from {best or 'no heuristic'}")
    head = ("| policy | total cost [95% CI] | latency | transfer | exchange | MB moved | avg JCT | "
            f"diff vs {best or '-'} [95% CI] |")
    lines = [title, "", head, "|---|---|---|---|---|---|---|---|"]
    for n in sorted(res, key=lambda n: res[n]["total_cost"]["mean"]):
        e = res[n]
        unfinished = sum(e["unfinished"]["per_seed"])
        label = (n + (f" ({unfinished:g} jobs unfinished)" if unfinished else "")
                 + (" (learned)" if e["learned"] else ""))
        diff = _ci(e["diff_vs_best"], sign="+") if "diff_vs_best" in e else "-"
        lines.append(f"| {label} | {_ci(e['total_cost'])} | {e['latency_cost']['mean']:.1f} | "
                     f"{e['transfer_cost']['mean']:.1f} | {e['exchange_cost']['mean']:.1f} | "
                     f"{e['mb_moved']['mean']:.0f} | {_fmt_jct(e['avg_jct'])} | {diff} |")
    return "\n".join(lines)


def _fmt_jct(s: dict) -> str:
    return f"{s['mean']:.2f}" if np.isfinite(s["mean"]) else "-"
