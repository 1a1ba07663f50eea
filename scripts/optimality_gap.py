"""Distance from optimal: every registered policy against the exact offline optimum.

Over many small random instances (tapfinger.evaluation.optimal.small_scenario: 2-3 one-node clusters of
4..8 CPUs and GPUs, IMG and LM tasks, about a dozen tasks), it solves the optimum with HiGHS,
runs each policy of agents/registry.py on the same arrivals (same seed), and prints a markdown
table of avg_jct / optimal (mean and 95% CI over instances), and of the per-task lower bound
(tapfinger/evaluation/bounds.py) and the integer program's LP relaxation over the optimum.

    .venv/bin/python scripts/optimality_gap.py --instances 50
    .venv/bin/python scripts/optimality_gap.py --instances 10 --policies random min fifo

The optimum is non-preemptive and ignores the pending window (see tapfinger/evaluation/optimal/): a
preemptive policy may score a ratio below 1, a non-preemptive one never should; the script
counts both, and how many optima were not replayable in the engine (a window overflowed).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from agents.registry import make_policy, policy_names
from tapfinger.evaluation.bounds import lower_bound
from tapfinger.evaluation.metrics import mean_ci
from tapfinger.evaluation.optimal import WindowOverflowError, optimal, replay_schedule, small_scenario
from envs.episode import run_episode
from tapfinger.sim.workload import make_workload


@dataclass
class PolicyStats:
    preemptive: bool | None = None
    ratios: list[float] = field(default_factory=list)
    avg_jct: list[float] = field(default_factory=list)
    truncated: int = 0
    failed: str = ""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=50, help="random instances (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="first instance seed (default 0)")
    ap.add_argument("--clusters", type=int, nargs="+", default=[2, 3],
                    help="cluster counts, used in turn (default 2 3)")
    ap.add_argument("--tasks", type=int, default=12, help="tasks per instance (default 12)")
    ap.add_argument("--rate", type=float, default=2.0, help="Poisson arrivals per slot (default 2)")
    ap.add_argument("--policies", nargs="+", default=None,
                    help="policy names (default: all of agents/registry.py)")
    ap.add_argument("--time-limit", type=float, default=300.0, help="HiGHS seconds per instance")
    return ap.parse_args(argv)


@dataclass
class Study:
    """What the instances gave: per policy, and for the optimum and its bounds."""

    per_policy: dict[str, PolicyStats]
    bound_ratio: list[float] = field(default_factory=list)  # lower bound / optimum
    lp_ratio: list[float] = field(default_factory=list)  # LP relaxation / optimum
    opt_values: list[float] = field(default_factory=list)
    milp_seconds: list[float] = field(default_factory=list)
    binaries: list[int] = field(default_factory=list)
    overflow: int = 0  # optima the engine could not replay (a window overflowed)


def run_policy(st: PolicyStats, name: str, scenario, seed: int, opt: float) -> None:
    """One policy on one instance, into its stats (a failing policy is skipped from then on)."""
    try:
        policy = make_policy(name, scenario, seed=seed)
        res = run_episode(scenario, policy, seed)
    except Exception as exc:  # a policy under construction must not sink the study
        st.failed = f"{type(exc).__name__}: {exc}"
        warnings.warn(f"policy {name} skipped: {st.failed}", stacklevel=1)
        return
    st.preemptive = bool(policy.preemptive)
    if res.truncated:
        st.truncated += 1
        return
    st.avg_jct.append(res.avg_jct)
    st.ratios.append(res.avg_jct / opt)


def run_study(args: argparse.Namespace, names: list[str]) -> Study:
    study = Study({n: PolicyStats() for n in names})
    for i in tqdm(range(args.instances), desc="instances", unit="inst"):
        seed = args.seed + i
        scenario = small_scenario(args.clusters[i % len(args.clusters)], seed=seed, tasks=args.tasks,
                                  rate=args.rate)
        workload = make_workload(scenario, seed)  # what run_episode(…, seed) replays
        t0 = time.perf_counter()
        sched = optimal(scenario, workload, time_limit=args.time_limit)
        study.milp_seconds.append(time.perf_counter() - t0)
        study.binaries.append(sched.num_binaries)
        opt = sched.avg_jct
        study.opt_values.append(opt)
        study.bound_ratio.append(lower_bound(scenario, workload)[1] / opt)
        study.lp_ratio.append(sched.lp_bound / opt)
        try:
            replay_schedule(scenario, workload, sched)
        except WindowOverflowError:
            study.overflow += 1
        for name in names:
            if not study.per_policy[name].failed:
                run_policy(study.per_policy[name], name, scenario, seed, opt)
    return study


def print_report(args: argparse.Namespace, study: Study) -> int:
    """The markdown table; 1 if a non-preemptive policy beat the optimum (a bug somewhere)."""
    ms = np.asarray(study.milp_seconds)
    print(f"\n### Distance from optimal ({args.instances} instances: {args.tasks} tasks, "
          f"clusters {args.clusters}, rate {args.rate}, seeds {args.seed}..{args.seed + args.instances - 1})\n")
    m, lo, hi = mean_ci(study.opt_values)
    print(f"optimal avg JCT: {m:.3f} [{lo:.3f}, {hi:.3f}]; MILP time per instance: mean {ms.mean():.2f} s, "
          f"median {np.median(ms):.2f} s, max {ms.max():.2f} s; binaries: mean {np.mean(study.binaries):.0f}, "
          f"max {max(study.binaries)}; optima not replayable (window overflow): {study.overflow}\n")
    print("| policy | preemptive | avg JCT | avg JCT / optimal [95% CI] | worst ratio | below optimal |")
    print("|---|---|---|---|---|---|")
    m, lo, hi = mean_ci(study.bound_ratio)
    print(f"| *lower bound* (bounds.py) | – | – | {m:.3f} [{lo:.3f}, {hi:.3f}] | {min(study.bound_ratio):.3f} (lowest) | – |")
    m, lo, hi = mean_ci(study.lp_ratio)
    print(f"| *LP relaxation* | – | – | {m:.3f} [{lo:.3f}, {hi:.3f}] | {min(study.lp_ratio):.3f} (lowest) | – |")
    rows = [(n, s) for n, s in study.per_policy.items() if s.ratios]
    rows.sort(key=lambda r: float(np.mean(r[1].ratios)))
    for name, st in rows:
        m, lo, hi = mean_ci(st.ratios)
        below = sum(r < 1 - 1e-9 for r in st.ratios)
        note = f" ({st.truncated} truncated)" if st.truncated else ""
        print(f"| {name}{note} | {'yes' if st.preemptive else 'no'} | {np.mean(st.avg_jct):.3f} | "
              f"{m:.3f} [{lo:.3f}, {hi:.3f}] | {max(st.ratios):.3f} | {below} |")
    for name, st in study.per_policy.items():
        if st.failed:
            print(f"\n{name}: skipped ({st.failed})")
    bad = [n for n, s in study.per_policy.items()
           if s.preemptive is False and any(r < 1 - 1e-9 for r in s.ratios)]
    if bad:
        print(f"\nWARNING: non-preemptive policies below the optimum (a bug somewhere): {', '.join(bad)}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return print_report(args, run_study(args, args.policies or policy_names()))


if __name__ == "__main__":
    sys.exit(main())
