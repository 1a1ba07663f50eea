"""`tapfinger evaluate`: compare schedulers on the same seeds, with CIs, a JSON file and plots."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tapfinger.sim.scenario import load_scenario


def add_common(p: argparse.ArgumentParser, default_policies: str, default_seeds: int) -> None:
    p.add_argument("--scenario", default="edge-default", help="built-in name or TOML file (default: edge-default)")
    p.add_argument("--policies", default=default_policies,
                   help=f"comma-separated policy names (default: {default_policies}); see --list-policies")
    p.add_argument("--seeds", type=int, default=default_seeds, help=f"number of seeds (default: {default_seeds})")
    p.add_argument("--seed-start", type=int, default=1000,
                   help="first seed (default: 1000; training uses seeds below 1000)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="parallel worker processes (default: number of cores, at most 2)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint for the `tapfinger` policy (default: the shipped one for the scenario)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="compare policies on common seeds; table, results.json, plots",
                       description="Run every policy on the same seeds (common random numbers), in parallel "
                                   "processes. Prints avg JCT mean and 95%% CI, p50/p95/p99 JCT, makespan, "
                                   "utilisation, decisions/s and each policy's paired difference from the best "
                                   "heuristic; writes OUT/results.json and PNG plots.")
    add_common(p, "greedy,optimus,tiresias,sjf,fifo,drf,min,random", 30)
    p.add_argument("--out", default="results/evaluate", help="output folder (default: results/evaluate)")
    p.add_argument("--list-policies", action="store_true", help="list the policy names and exit")
    p.set_defaults(func=run)


def evaluate_and_report(args: argparse.Namespace, out: Path) -> dict:
    from agents.registry import policy_options
    from tapfinger.evaluation.harness import EvalConfig, format_table, run_evaluation, write_results

    scenario = load_scenario(args.scenario)
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    # The registry resolves each name to its class (an unknown name is a ValueError naming the
    # known ones) and gives a policy built from a checkpoint its --checkpoint.
    options = {n: policy_options(n, scenario, checkpoint=args.checkpoint) for n in names}
    cfg = EvalConfig(scenario, names, list(range(args.seed_start, args.seed_start + args.seeds)),
                     workers=max(1, args.workers), policy_options=options, progress=not args.quiet)
    results = run_evaluation(cfg)
    print(format_table(results))
    path = write_results(results, out)
    print(f"\nwrote {path}")
    if not args.no_plots:
        from tapfinger.evaluation.plots import write_plots

        for p in write_plots(results, out):
            print(f"wrote {p}")
    return results


def run(args: argparse.Namespace) -> int:
    if args.list_policies:
        from agents.registry import policy_names

        print("\n".join(policy_names()))
        return 0
    evaluate_and_report(args, Path(args.out))
    return 0
