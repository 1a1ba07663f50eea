"""Average JCT of heuristic policies over many seeds, as a small table.

    .venv/bin/python scripts/heuristics_table.py --scenario hetero-6 --policies fifo sjf drf greedy --seeds 30

Runs every (policy, seed) episode in a multiprocessing pool (2 workers by default: the build
machines have 2 cores), with a tqdm bar, and prints per policy the mean over seeds of the
episode's average JCT (slots) with a 95% confidence interval (Student t), plus the paired
difference to the first policy listed (same seeds, hence the same arrival streams).
"""

from __future__ import annotations

import argparse
import sys
from multiprocessing import Pool

import numpy as np
from tqdm import tqdm

from agents.registry import make_policy, policy_names
from envs.episode import run_episode
from tapfinger.evaluation.metrics import mean_ci
from tapfinger.sim.scenario import load_scenario


def run_one(job: tuple[str, str, int]) -> tuple[str, int, float, bool]:
    """One episode: (policy, seed, avg JCT, truncated)."""
    scenario_name, policy_name, seed = job
    scenario = load_scenario(scenario_name)
    result = run_episode(scenario, make_policy(policy_name, scenario, seed=seed), seed)
    return policy_name, seed, result.avg_jct, result.truncated


def mean_half_width(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (`metrics.mean_ci`; 0 for one value)."""
    m, _, hi = mean_ci(values)
    return m, hi - m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="hetero-6", help="built-in scenario name or TOML path")
    parser.add_argument("--policies", nargs="+", default=["fifo", "sjf", "drf", "greedy"],
                        help=f"policy names ({', '.join(policy_names())})")
    parser.add_argument("--seeds", type=int, default=30, help="number of seeds")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    args = parser.parse_args(argv)
    unknown = [p for p in args.policies if p not in policy_names()]
    if unknown:
        parser.error(f"unknown policy {', '.join(unknown)}; use one of {', '.join(policy_names())}")
    if args.seeds < 1:
        parser.error("--seeds must be >= 1")
    load_scenario(args.scenario)  # fail early, in the parent, on a bad scenario

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    jobs = [(args.scenario, p, s) for p in args.policies for s in seeds]
    jct = {p: np.full(len(seeds), np.nan) for p in args.policies}
    truncated = 0
    with Pool(args.workers) as pool:
        for policy, seed, value, trunc in tqdm(pool.imap_unordered(run_one, jobs), total=len(jobs),
                                               desc=args.scenario, file=sys.stderr):
            jct[policy][seed - args.first_seed] = value
            truncated += int(trunc)

    print(f"{args.scenario}: average JCT (slots) over seeds {seeds[0]}..{seeds[-1]}, mean ± 95% CI")
    first = args.policies[0]
    for p in args.policies:
        m, h = mean_half_width(jct[p])
        line = f"  {p:<10} {m:8.3f} ± {h:.3f}"
        if p != first:
            dm, dh = mean_half_width(jct[p] - jct[first])
            line += f"   paired diff vs {first}: {dm:+.3f} ± {dh:.3f}"
        print(line)
    if truncated:
        print(f"  warning: {truncated} episode(s) hit the scenario's max_slots and were truncated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
