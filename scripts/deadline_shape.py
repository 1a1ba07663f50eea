"""Does the published shape hold? Deadline satisfaction of edf, elasticflow, elasticflow-edge and
edgeflow (and greedy) on a loaded cloud-edge scenario (issue 14, item 9).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/deadline_shape.py --seeds 20 --workers 2 [--rate 0.4]

Every policy runs on the same seeds through the evaluation harness (`tapfinger.evaluation.harness`,
so the ratio is the one `tapfinger evaluate` reports: tasks that met their deadline / tasks with
one; declined, late and unfinished ones missed it). It prints each policy's deadline ratio with its
95% CI and the paired differences (same seeds, hence the same arrivals and deadlines)

    elasticflow - edf                  ElasticFlow (ASPLOS'23): admission control and elastic shares
                                       meet more deadlines than EDF;
    elasticflow-edge - elasticflow     EdgeFlow (2025): using the edge's idle GPUs meets more than the
    edgeflow - elasticflow             cloud alone;

and exits with code 1, naming each comparison that fails, unless every one of those differences has
a 95% CI above zero. Finished episodes are kept in OUT/episodes.partial.jsonl: after Ctrl-C the same
command runs only the missing ones. `--rate` raises the load (mean arrivals per slot); `--slack`
overrides the deadline rule's slack range (to explore when deadlines hold on an edge GPU).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

SHAPE = (("elasticflow", "edf", "ElasticFlow meets more deadlines than EDF"),
         ("elasticflow-edge", "elasticflow", "edge capacity (ElasticFlow+Edge) meets more than the cloud alone"),
         ("edgeflow", "elasticflow", "EdgeFlow's offload meets more than the cloud alone"))
POLICIES = ["edf", "elasticflow", "elasticflow-edge", "edgeflow", "greedy"]


def build_scenario(args: argparse.Namespace):
    from tapfinger.sim.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    if scenario.deadlines.rule == "none" and scenario.arrivals.process == "poisson":
        raise ValueError(f"scenario {args.scenario} draws no deadlines ([deadlines] rule = none). Fix: use a "
                         f"scenario with deadlines, e.g. cloud-edge")
    arrivals = scenario.arrivals
    if args.rate is not None:
        if not args.rate > 0:
            raise ValueError(f"--rate {args.rate}: must be > 0 (mean arrivals per slot)")
        # the same day of arrivals at a higher rate: more tasks in the same time
        tasks = args.tasks or max(1, round(arrivals.tasks * args.rate / arrivals.rate))
        arrivals = dataclasses.replace(arrivals, rate=args.rate, tasks=tasks)
    elif args.tasks:
        arrivals = dataclasses.replace(arrivals, tasks=args.tasks)
    changes = {"arrivals": arrivals}
    if args.slack is not None:
        low, high = args.slack
        if not 0 < low <= high:
            raise ValueError(f"--slack {low} {high}: need 0 < LOW <= HIGH")
        changes["deadlines"] = dataclasses.replace(scenario.deadlines, slack_low=low, slack_high=high)
    return scenario.with_overrides(**changes)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="cloud-edge", help="built-in name or TOML file (default: cloud-edge)")
    parser.add_argument("--rate", type=float, default=None,
                        help="mean arrivals per slot (default: the scenario's); the task count grows with it "
                             "so that arrivals span the same time")
    parser.add_argument("--tasks", type=int, default=None, help="tasks per episode (default: the scenario's, "
                                                                 "scaled with --rate)")
    parser.add_argument("--slack", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                        help="deadline slack range (default: the scenario's)")
    parser.add_argument("--seeds", type=int, default=20, help="number of seeds (default: 20)")
    parser.add_argument("--seed-start", type=int, default=1000, help="first seed (default: 1000)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--with-greedy", action=argparse.BooleanOptionalAction, default=True,
                        help="also run greedy, for reference (default: yes)")
    parser.add_argument("--out", default="results/deadline-shape",
                        help="folder for the episode cache that lets an interrupted run resume")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.seeds < 2:
        parser.error("--seeds must be >= 2 (a confidence interval needs two seeds)")
    if args.workers < 1:
        parser.error("--workers must be >= 1")
    if args.tasks is not None and args.tasks < 1:
        parser.error("--tasks must be >= 1")
    return args


def report(scenario, names: list[str], seeds: list[int], results: dict) -> int:
    """Print the ratios and the paired differences; 0 if the shape holds, 1 if not, 2 without ratios."""
    from tapfinger.evaluation.metrics import mean_ci

    res = results["policies"]
    missing = [n for n in names if "deadline_ratio" not in res[n]]
    if missing:
        print(f"deadline_shape.py: error: no deadline ratio for {', '.join(missing)} (no task had a deadline). "
              f"Fix: use a scenario with deadlines", file=sys.stderr)
        return 2
    ratio = {n: np.asarray(res[n]["deadline_ratio"]["per_seed"], dtype=np.float64) for n in names}
    arr = scenario.arrivals
    print(f"{scenario.name}: rate {arr.rate:g}/slot, {arr.tasks} tasks, slack "
          f"[{scenario.deadlines.slack_low:g}, {scenario.deadlines.slack_high:g}], seeds {seeds[0]}..{seeds[-1]}")
    print("deadline ratio (met / tasks with a deadline), mean [95% CI]; declined per episode")
    for n in names:
        m, lo, hi = mean_ci(ratio[n])
        print(f"  {n:<17} {m:6.3f} [{lo:6.3f}, {hi:6.3f}]   declined {res[n]['declined']['mean']:5.1f}   "
              f"avg JCT {res[n]['avg_jct']['mean']:7.2f}")
    print("paired differences, mean [95% CI]")
    failed = []
    for a, b, claim in SHAPE:
        m, lo, hi = mean_ci(ratio[a] - ratio[b])
        holds = bool(np.isfinite(lo) and lo > 0)
        print(f"  {a + ' - ' + b:<32} {m:+6.3f} [{lo:+6.3f}, {hi:+6.3f}]   "
              f"{'holds' if holds else 'DOES NOT HOLD'}: {claim}")
        if not holds:
            failed.append(f"{a} - {b} = {m:+.3f} [{lo:+.3f}, {hi:+.3f}] ({claim})")
    if failed:
        print(f"deadline_shape.py: the published shape does not hold on {scenario.name}: the 95% CI of "
              + "; of ".join(failed) + " does not lie above 0. Fix: a more loaded scenario (--rate), more seeds, "
              "or deadlines that an edge GPU can meet (see docs/deadline-baselines.md)", file=sys.stderr)
        return 1
    print("the published shape holds")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        scenario = build_scenario(args)
    except ValueError as exc:  # ScenarioError is a ValueError
        print(f"deadline_shape.py: error: {exc}", file=sys.stderr)
        return 2
    from tapfinger.evaluation.episode_cache import CACHE_NAME, EpisodeCache
    from tapfinger.evaluation.harness import EvalConfig, run_evaluation

    names = POLICIES if args.with_greedy else POLICIES[:4]
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"deadline_shape.py: error: --out {out}: cannot create it ({exc.strerror or exc}). Fix: pass --out "
              f"a folder you can write to", file=sys.stderr)
        return 2
    cache = EpisodeCache(out / CACHE_NAME)
    cfg = EvalConfig(scenario, names, seeds, workers=args.workers, progress=not args.quiet, cache=cache)
    try:
        results = run_evaluation(cfg)
    except KeyboardInterrupt as exc:  # the harness terminated its workers; finished episodes are cached
        said = f": {exc.args[0]}" if exc.args else ""
        print(f"deadline_shape.py: interrupted{said}", file=sys.stderr)
        return 130
    cache.remove()
    return report(scenario, names, seeds, results)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # numpy per worker: the cores are shared
    sys.exit(main())
