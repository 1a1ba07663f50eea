"""Training throughput and time-to-quality, read from a run folder of `tapfinger train`.

    python scripts/bench_training.py runs/hetero-6 [--beat optimus]

Prints environment steps (rounds) per second, PPO updates per second, the time split between
collecting and updating, and the wall time (since the run started, imitation included) at which
the periodic evaluation first beat the given heuristic on the same evaluation seeds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir")
    ap.add_argument("--beat", default="optimus", help="heuristic to compare the evaluations with")
    args = ap.parse_args()
    from agents.learned.checkpoint import read_payload
    from agents.learned.train import EVAL_SEED_START, heuristic_avg_jct
    from tapfinger.sim.scenario import load_scenario

    payload = read_payload(Path(args.run_dir) / "checkpoint.pt")
    history = json.loads(payload.get("history", "[]"))
    cfg = json.loads(payload["train_config"])
    if not history:
        raise SystemExit("no PPO iterations in this run yet")
    started = float(payload.get("started", history[0]["wall"] - history[0]["collect_s"] - history[0]["update_s"]))
    sps = [h["sps"] for h in history]
    print(f"run {args.run_dir}: scenario {payload['scenario']}, {len(history)} PPO iterations, "
          f"{payload['step']} steps, envs {cfg['envs']}, device {cfg['device']}")
    print(f"env steps/s (collect + update): mean {np.mean(sps):.0f}, median {np.median(sps):.0f}")
    collect = np.array([h["collect_s"] for h in history])
    update = np.array([h["update_s"] for h in history])
    steps = np.diff([0] + [h["step"] for h in history])
    print(f"collect only: {steps.sum() / collect.sum():.0f} steps/s; updates: {1 / update.mean():.3f} per s "
          f"({update.mean():.1f} s per PPO update of one iteration)")
    evals = [h for h in history if "eval_avg_jct" in h]
    if not evals:
        return
    seeds = list(range(EVAL_SEED_START, EVAL_SEED_START + cfg["eval_seeds"]))
    target = heuristic_avg_jct(load_scenario(payload["scenario"]), args.beat, seeds)
    first = next((h for h in evals if h["eval_avg_jct"] < target), None)
    best = min(evals, key=lambda h: h["eval_avg_jct"])
    print(f"{args.beat} on the evaluation seeds: {target:.3f}; best evaluation {best['eval_avg_jct']:.3f} "
          f"at step {best['step']}")
    if first is None:
        print(f"the policy never beat {args.beat} in this run")
    else:
        print(f"first beat {args.beat}: {first['eval_avg_jct']:.3f} at step {first['step']}, "
              f"{(first['wall'] - started) / 60:.1f} min after the start")


if __name__ == "__main__":
    main()
