"""A grid of scenarios x policies x seeds into one results folder, resumable (issue 17, item 3).

    .venv/bin/python scripts/sweep.py --scenarios edge-default,hetero-6 --policies greedy,sjf,fifo \\
        --seeds 30 --out results/sweep [--backend ray [--ray-address HOST:PORT]] [--workers 8]

Every scenario is one evaluation by the harness (`tapfinger.evaluation.harness`, as `tapfinger
evaluate` runs it: common seeds, the same episodes on either backend) into OUT/SCENARIO/results.json,
and OUT/sweep.json lists, per scenario, each policy's mean avg JCT and the best heuristic.

Resumable, cell by cell: every finished episode (one cell: scenario, policy, seed) is appended to
OUT/SCENARIO/episodes.jsonl as it finishes and that file is kept, so the same command run again
(after Ctrl-C, a lost worker, or with more policies or seeds) runs only the cells not in it. A
cell's key hashes everything its episode depends on (the scenario and the files it reads, the
policy and its options, the seed, the version: `episode_cache.job_key`), so an edited scenario or
a new checkpoint never reuses a stale cell. With `--backend ray`, Ray is started (or joined) once
for the whole sweep.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from pathlib import Path

from agents.registry import policy_options
from tapfinger.evaluation.episode_cache import EpisodeCache
from tapfinger.evaluation.harness import EvalConfig, run_evaluation, write_results
from tapfinger.sim.scenario import Scenario, load_scenario

CELLS = "episodes.jsonl"  # kept after the sweep: what a rerun skips


def folder_name(scenario_arg: str) -> str:
    """The subfolder of a --scenarios entry: a built-in's name, or a TOML file's stem."""
    return Path(scenario_arg).stem if scenario_arg.endswith(".toml") else scenario_arg


def shortened(scenario: Scenario, tasks: int) -> Scenario:
    """`scenario` with `tasks` arrivals (0: as it is): quick sweeps and tests."""
    if not tasks:
        return scenario
    return dataclasses.replace(scenario, arrivals=dataclasses.replace(scenario.arrivals, tasks=tasks))


def sweep(scenarios: list[str], policies: list[str], seeds: list[int], out: Path, *, workers: int = 1,
          backend: str = "local", ray_address: str | None = None, tasks: int = 0,
          checkpoint: str | None = None, progress: bool = True) -> dict:
    """Evaluate every scenario in `scenarios` with `policies` on `seeds`; OUT/sweep.json's content."""
    names = [folder_name(s) for s in scenarios]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ValueError(f"--scenarios: two entries would both write {out / twice}. Fix: name each scenario "
                         f"once (rename one of two TOML files with the same stem)")
    loaded = [shortened(load_scenario(s), tasks) for s in scenarios]  # every scenario checked before any runs
    summary: dict = {"policies": policies, "seeds": seeds, "scenarios": {}}
    with _one_ray(backend, ray_address, workers):
        for name, scenario in zip(names, loaded, strict=True):
            folder = out / name
            folder.mkdir(parents=True, exist_ok=True)
            options = {p: policy_options(p, scenario, checkpoint=checkpoint) for p in policies}
            cfg = EvalConfig(scenario, policies, seeds, workers=workers, policy_options=options,
                             progress=progress, cache=EpisodeCache(folder / CELLS), backend=backend,
                             ray_address=ray_address)
            results = run_evaluation(cfg)
            write_results(results, folder)
            summary["scenarios"][name] = {
                "results": f"{name}/results.json", "best_heuristic": results["best_heuristic"],
                "avg_jct": {p: results["policies"][p]["avg_jct"]["mean"] for p in policies}}
    (out / "sweep.json").write_text(json.dumps(summary, indent=2))
    return summary


@contextlib.contextmanager
def _one_ray(backend: str, address: str | None, workers: int):
    """Ray connected once for all the scenarios (the harness uses a Ray that is already up), so a
    sweep pays Ray's start-up once, not once per scenario."""
    if backend != "ray":
        yield
        return
    from tapfinger.evaluation.ray_backend import ray_session

    with ray_session(address, workers):
        yield


def _names(text: str, flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"{flag} {text!r}: give comma-separated names, each once")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", required=True, help="comma-separated built-in names or TOML files")
    p.add_argument("--policies", required=True, help="comma-separated policy names")
    p.add_argument("--seeds", type=int, default=30, help="seeds per cell column (default: 30)")
    p.add_argument("--seed-start", type=int, default=1000, help="first seed (default: 1000)")
    p.add_argument("--out", required=True, help="results folder (one subfolder per scenario)")
    p.add_argument("--workers", type=int, default=2, help="episodes run at once (default: 2)")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="local processes or Ray tasks")
    p.add_argument("--ray-address", default=None, help="a running Ray cluster (default: Ray started here)")
    p.add_argument("--tasks", type=int, default=0, help="arrivals per episode (default 0: the scenario's)")
    p.add_argument("--checkpoint", default=None, help="checkpoint of the `tapfinger` policy")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.seeds < 1 or args.workers < 1 or args.tasks < 0:
        p.error("--seeds and --workers must be at least 1, --tasks at least 0")
    try:
        summary = sweep(_names(args.scenarios, "--scenarios"), _names(args.policies, "--policies"),
                        list(range(args.seed_start, args.seed_start + args.seeds)), Path(args.out),
                        workers=args.workers, backend=args.backend, ray_address=args.ray_address,
                        tasks=args.tasks, checkpoint=args.checkpoint, progress=not args.quiet)
    except KeyboardInterrupt as exc:
        print(f"sweep: interrupted: {exc.args[0] if exc.args else ''} (rerun the same command)", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2
    for name, s in summary["scenarios"].items():
        print(f"{name}: best heuristic {s['best_heuristic']}; wrote {Path(args.out) / s['results']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
