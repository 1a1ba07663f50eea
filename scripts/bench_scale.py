"""Scaling of evaluation sweeps and training collection with the number of workers, local processes
against Ray (issue 17, item 5), in one run:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_scale.py [--workers 1 2 4] [--seeds 8]
        [--envs 8] [--scenario hetero-6] [--tasks 40] [--ray-address HOST:PORT] [--json OUT.json]

(a) evaluation: episodes/s of one sweep (--policies x --seeds of --scenario) through the harness;
(b) training collection: rounds/s of collecting --envs episodes with an untrained network (the
    Collector of `tapfinger train`), after one warm-up collection that starts the workers.

Ray's start-up (ray.init, or connecting to --ray-address) is timed once, separately, and is not in
any rate; each row's time does include starting that row's Ray tasks or actors (the
per-evaluation or per-run cost a user pays). The rates are wall-clock on this machine: on a
shared or 2-core machine, more workers than cores only measure contention. Collection with 1
worker runs in the training process on either backend (as `tapfinger train --workers 1` does), so
the ray row of 1 worker is the in-process rate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from tapfinger.evaluation.harness import EvalConfig, run_evaluation
from tapfinger.sim.scenario import load_scenario


def _scenario(name: str, tasks: int):
    sc = load_scenario(name)
    return dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=tasks)) if tasks else sc


def bench_evaluation(sc, policies: list[str], seeds: int, workers: int, backend: str, address) -> dict:
    cfg = EvalConfig(sc, policies, list(range(1000, 1000 + seeds)), workers=workers, progress=False,
                     backend=backend, ray_address=address)
    t0 = time.perf_counter()
    run_evaluation(cfg)
    wall = time.perf_counter() - t0
    episodes = len(policies) * seeds
    return {"part": "evaluate", "backend": backend, "workers": workers, "episodes": episodes,
            "wall_s": wall, "episodes_per_s": episodes / wall}


def bench_collection(sc, envs: int, workers: int, backend: str, address) -> dict:
    import torch

    from agents.learned.acting import ActingOptions
    from agents.learned.collect import EpisodeJob, RewardSpec
    from agents.learned.model import ModelConfig, TapFingerNet
    from agents.learned.workers import Collector

    torch.manual_seed(0)
    net = TapFingerNet(ModelConfig.for_scenario(sc)).eval()
    jobs = [EpisodeJob(seed=e, sample_seed=100 + e) for e in range(envs)]
    collector = Collector(sc, ActingOptions(), workers, RewardSpec(), torch.device("cpu"), backend=backend,
                          ray_address=address)
    try:
        t0 = time.perf_counter()
        collector.run(net, jobs[: max(1, workers)])  # warm-up: workers started, torch imported there
        warm = time.perf_counter() - t0
        t1 = time.perf_counter()
        episodes = collector.run(net, jobs)
        wall = time.perf_counter() - t1
    finally:
        collector.close()
    rounds = sum(e.num_rounds for e in episodes)
    return {"part": "collect", "backend": backend, "workers": workers, "episodes": envs, "rounds": rounds,
            "warmup_s": warm, "wall_s": wall, "rounds_per_s": rounds / wall}


def _ray_started(address, workers: int):
    """Ray up for the whole benchmark (timed here, once), so that no row pays its start-up."""
    from agents.ray_session import ray_session

    session = ray_session(address, workers)
    t0 = time.perf_counter()
    session.__enter__()
    return session, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="hetero-6")
    p.add_argument("--tasks", type=int, default=40, help="arrivals per episode (0 = the scenario's)")
    p.add_argument("--policies", default="greedy,sjf,fifo,random")
    p.add_argument("--seeds", type=int, default=8, help="seeds of the evaluation sweep")
    p.add_argument("--envs", type=int, default=8, help="episodes of the timed collection")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--backends", nargs="+", default=["local", "ray"], choices=["local", "ray"])
    p.add_argument("--skip", nargs="*", default=[], choices=["evaluate", "collect"])
    p.add_argument("--ray-address", default=None, help="a running Ray cluster (default: Ray started here)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    sc = _scenario(args.scenario, args.tasks)
    policies = [n for n in args.policies.split(",") if n]
    rows: list[dict] = []
    startup = None
    session = None
    if "ray" in args.backends:
        session, startup = _ray_started(args.ray_address, max(args.workers))
        print(f"ray start-up: {startup:.2f} s (not in any rate below)")
    try:
        for backend in args.backends:
            for w in args.workers:
                if "evaluate" not in args.skip:
                    rows.append(bench_evaluation(sc, policies, args.seeds, w, backend, args.ray_address))
                    print(_line(rows[-1]), flush=True)
                if "collect" not in args.skip:
                    rows.append(bench_collection(sc, args.envs, w, backend, args.ray_address))
                    print(_line(rows[-1]), flush=True)
    finally:
        if session is not None:
            session.__exit__(None, None, None)
    if args.json:
        Path(args.json).write_text(json.dumps({"scenario": sc.name, "tasks": args.tasks, "ray_startup_s": startup,
                                               "rows": rows}, indent=2))
    return 0


def _line(r: dict) -> str:
    rate = (f"{r['episodes_per_s']:8.2f} episodes/s" if r["part"] == "evaluate"
            else f"{r['rounds_per_s']:8.1f} rounds/s (warm-up {r['warmup_s']:.2f} s)")
    return f"{r['part']:<8} {r['backend']:<5} workers {r['workers']:>3}: {rate}  [{r['wall_s']:.2f} s]"


if __name__ == "__main__":
    sys.exit(main())
