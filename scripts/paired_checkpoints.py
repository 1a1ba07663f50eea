"""Paired comparison of trained checkpoints (and heuristics) on common held-out seeds.

    python scripts/paired_checkpoints.py START.pt TUNED.pt [MORE.pt ...] --scenario hetero-6 \
        [--seeds 50] [--seed-start 1000] [--heuristics greedy,optimus]

Each checkpoint's greedy play (the `tapfinger` policy's) on the same seeds, in lockstep
(`agents.learned.collect.collect_lockstep`, which gives the episodes of one-at-a-time play), and
each heuristic through `envs.episode.run_episode`. Prints every policy's mean avg JCT with its 95%
CI, and each one's paired difference from the FIRST checkpoint (negative = better than it), with
the Student-t CI of `tapfinger.evaluation.metrics.mean_ci`.
"""

from __future__ import annotations

import argparse

import numpy as np


def checkpoint_jcts(path: str, scenario, seeds: list[int]) -> np.ndarray:
    from agents.learned.acting import ActingOptions
    from agents.learned.checkpoint import load_checkpoint
    from agents.learned.collect import EpisodeJob, collect_lockstep

    ckpt = load_checkpoint(path, scenario)
    episodes = collect_lockstep(scenario, ckpt.net.eval(), ActingOptions(**ckpt.acting),
                                [EpisodeJob(s, deterministic=True) for s in seeds])
    return np.array([e.avg_jct for e in episodes])


def heuristic_jcts(name: str, scenario, seeds: list[int]) -> np.ndarray:
    from agents.registry import make_policy
    from envs.episode import run_episode

    return np.array([run_episode(scenario, make_policy(name, scenario, seed=s), s).avg_jct for s in seeds])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoints", nargs="+", help="checkpoint files; differences are against the first")
    ap.add_argument("--scenario", required=True)
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--seed-start", type=int, default=1000, help="first seed (training never uses >= 1000)")
    ap.add_argument("--heuristics", default="greedy", help="comma-separated heuristics to include ('' = none)")
    args = ap.parse_args()
    if args.seeds < 2 or args.seed_start < 0:
        ap.error("--seeds must be at least 2 (a CI needs two) and --seed-start at least 0")
    from tapfinger.evaluation.metrics import mean_ci
    from tapfinger.sim.scenario import load_scenario

    sc = load_scenario(args.scenario)
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    rows = {p: checkpoint_jcts(p, sc, seeds) for p in args.checkpoints}
    for h in filter(None, args.heuristics.split(",")):
        rows[h] = heuristic_jcts(h, sc, seeds)
    base = rows[args.checkpoints[0]]
    print(f"{args.scenario}, seeds {seeds[0]}..{seeds[-1]}; differences against {args.checkpoints[0]}")
    for name, jct in rows.items():
        m, lo, hi = mean_ci(jct)
        d, dlo, dhi = mean_ci(jct - base)
        print(f"{name:40s} avg JCT {m:7.3f} [{lo:.3f}, {hi:.3f}]   paired diff {d:+.3f} [{dlo:+.3f}, {dhi:+.3f}]")


if __name__ == "__main__":
    main()
