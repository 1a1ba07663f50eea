"""Training throughput: batched collection and PPO updates against the engine, in one run.

    python scripts/bench_training.py --scenario hetero-6 --envs 32 --workers 2 --seconds 20 [--device cuda]
    python scripts/bench_training.py --run RUN_DIR [--beat optimus]   # time-to-quality of a finished run

The first form measures, on the same machine in the same run:
1. the engine's rounds/s with random feasible actions (`bench_env.bench_engine`: whole episodes
   through the one episode loop, action sampling excluded): what the simulator alone can do;
2. collection: `--envs` episodes in lockstep over `--workers` processes with an untrained network
   of the default size, repeated for `--seconds` (rounds of all episodes / wall time);
3. PPO updates on the collected episodes (values, advantages, the default epochs and
   minibatches): updates/s and decisions/s.
The last line is `ratio: X`, collection rounds/s over the engine's rounds/s.

`--run` reads the history of a `tapfinger train` run folder instead: its rounds/s, the split
between collecting and updating, and the wall time at which its periodic evaluation first beat
`--beat` on the same evaluation seeds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def bench_collection(scenario, envs: int, workers: int, seconds: float, device: str):
    import torch

    from agents.learned.acting import ActingOptions
    from agents.learned.collect import EpisodeJob
    from agents.learned.config import ModelOptions
    from agents.learned.model import ModelConfig, TapFingerNet
    from agents.learned.workers import Collector
    from dataclasses import asdict

    torch.manual_seed(0)
    net = TapFingerNet(ModelConfig.for_scenario(scenario, **asdict(ModelOptions()))).to(device).eval()
    collector = Collector(scenario, ActingOptions(), workers, 0.05, torch.device(device))
    rounds, wall, episodes, it = 0, 0.0, [], 0
    try:
        collector.run(net, [EpisodeJob(0, 0)] * min(envs, workers))  # warm-up: fork, first allocations
        while wall < seconds:
            jobs = [EpisodeJob(1000 + it * envs + e, 7 + it * envs + e) for e in range(envs)]
            t0 = time.perf_counter()
            episodes = collector.run(net, jobs)
            wall += time.perf_counter() - t0
            rounds += sum(e.num_rounds for e in episodes)
            it += 1
    finally:
        collector.close()
    return net, episodes, rounds / wall, it


def bench_update(net, episodes, device: str) -> tuple[float, float]:
    import torch

    from agents.learned.advantages import ValueNorm, attach_values, build_samples
    from agents.learned.config import PPOConfig
    from agents.learned.ppo import ppo_update

    cfg = PPOConfig()
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, eps=1e-5)
    t0 = time.perf_counter()
    vn = ValueNorm()
    attach_values(net, episodes, vn, torch.device(device))
    samples = build_samples(episodes, cfg.gamma, cfg.gae_lambda)
    vn.update(np.array([s.ret for s in samples]))
    net.train()
    ppo_update(net, opt, samples, episodes, cfg, np.random.default_rng(0), torch.device(device), vn)
    dt = time.perf_counter() - t0
    return 1.0 / dt, len(samples) * cfg.epochs / dt


def report_run(run_dir: str, beat: str) -> None:
    import json
    from pathlib import Path

    from agents.learned.checkpoint import read_payload
    from agents.learned.train import EVAL_SEED_START, heuristic_avg_jct
    from tapfinger.sim.scenario import load_scenario

    payload = read_payload(Path(run_dir) / "checkpoint.pt")
    history = json.loads(payload.get("history", "[]"))
    cfg = json.loads(payload["train_config"])
    if not history:
        raise SystemExit("no PPO iterations in this run yet")
    started = float(payload.get("started", history[0]["wall"] - history[0]["collect_s"] - history[0]["update_s"]))
    collect = np.array([h["collect_s"] for h in history])
    update = np.array([h["update_s"] for h in history])
    steps = np.diff([0] + [h["step"] for h in history])
    print(f"run {run_dir}: scenario {payload['scenario']}, {len(history)} PPO iterations, {payload['step']} rounds, "
          f"envs {cfg['envs']}, device {cfg['device']}")
    print(f"collection {steps.sum() / collect.sum():.0f} rounds/s; {update.mean():.1f} s per PPO update; "
          f"overall {steps.sum() / (collect.sum() + update.sum()):.0f} rounds/s")
    evals = [h for h in history if "eval_avg_jct" in h]
    if not evals:
        return
    seeds = list(range(EVAL_SEED_START, EVAL_SEED_START + cfg["eval_seeds"]))
    target = heuristic_avg_jct(load_scenario(payload["scenario"]), beat, seeds)
    first = next((h for h in evals if h["eval_avg_jct"] < target), None)
    best = min(evals, key=lambda h: h["eval_avg_jct"])
    print(f"{beat} on the evaluation seeds: {target:.3f}; best evaluation {best['eval_avg_jct']:.3f} at round "
          f"{best['step']}")
    if first is None:
        print(f"the policy never beat {beat} in this run")
    else:
        print(f"first beat {beat}: {first['eval_avg_jct']:.3f} at round {first['step']}, "
              f"{(first['wall'] - started) / 60:.1f} min after the start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="hetero-6")
    ap.add_argument("--envs", type=int, default=32, help="episodes collected in lockstep per iteration")
    ap.add_argument("--workers", type=int, default=2, help="processes sharing the episodes")
    ap.add_argument("--seconds", type=float, default=20.0, help="collection time to measure (each part)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--run", metavar="RUN_DIR", help="report a finished training run instead")
    ap.add_argument("--beat", default="optimus", help="with --run: the heuristic to compare evaluations with")
    args = ap.parse_args()
    if args.run:
        return report_run(args.run, args.beat)
    if args.envs < 1 or args.workers < 1 or args.seconds <= 0:
        ap.error("--envs and --workers must be at least 1 and --seconds positive")
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device. Fix: use --device cpu.")
    from bench_env import bench_engine

    from tapfinger.sim.scenario import load_scenario

    sc = load_scenario(args.scenario)
    engine = bench_engine(args.scenario, args.seconds / 2)["rounds_per_s"]
    print(f"engine ({args.scenario}, random feasible actions): {engine:.0f} rounds/s")
    net, episodes, collect, iterations = bench_collection(sc, args.envs, args.workers, args.seconds, args.device)
    print(f"collection (envs {args.envs}, workers {args.workers}, {args.device}): {collect:.0f} rounds/s "
          f"over {iterations} iterations")
    updates, decisions = bench_update(net, episodes, args.device)
    print(f"PPO update of one iteration ({len(episodes)} episodes): {updates:.3f} updates/s, "
          f"{decisions:.0f} decisions/s")
    print(f"ratio: {collect / engine:.3f}")


if __name__ == "__main__":
    main()
