"""Environment throughput: rounds and slots per second with random feasible actions.

    python scripts/bench_env.py [--scenarios hetero-6,edge-default] [--seconds 5]

Measures (1) the engine with batched observations (what the evaluation harness and trainers
use) and (2) the PettingZoo `step()` with per-agent dict actions and observations. Action
sampling is timed separately and excluded from the rates. Also the wall time of one full episode.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs import EdgeClusterEnv
from envs.observations import build_observations
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import load_scenario


def random_feasible(obs: dict, rng: np.random.Generator, p_pass: float = 0.3):
    N, W = obs["window_id"].shape
    R = obs["alloc_low"].shape[2]
    task = np.full(N, -1, dtype=np.int64)
    node = np.zeros(N, dtype=np.int64)
    alloc = np.zeros((N, R), dtype=np.int64)
    for i in range(N):
        places = np.flatnonzero(obs["task_mask"][i, 1:])
        if not places.size or rng.random() < p_pass:
            continue
        p = int(places[rng.integers(places.size)])
        nodes = np.flatnonzero(obs["node_mask"][i, p])
        n = int(nodes[rng.integers(nodes.size)])
        task[i], node[i] = p, n
        alloc[i] = rng.integers(obs["alloc_low"][i, p], obs["alloc_high"][i, n] + 1)
    return task, node, alloc


def bench_engine(name: str, seconds: float) -> dict:
    sc = load_scenario(name)
    eng = Engine(sc)
    rng = np.random.default_rng(0)
    rounds = slots = episodes = 0
    step_time = act_time = 0.0
    seed = 0
    eng.reset(seed)
    episode_walls = []
    ep_start = time.perf_counter()
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end or not episode_walls:
        t0 = time.perf_counter()
        obs = build_observations(eng)
        t1 = time.perf_counter()
        act = random_feasible(obs, rng)
        t2 = time.perf_counter()
        ended = eng.play_round(*act)
        t3 = time.perf_counter()
        step_time += (t1 - t0) + (t3 - t2)
        act_time += t2 - t1
        rounds += 1
        slots += ended
        if eng.done:
            episode_walls.append(time.perf_counter() - ep_start)
            episodes += 1
            seed += 1
            eng.reset(seed)
            ep_start = time.perf_counter()
    return {"rounds_per_s": rounds / step_time, "slots_per_s": slots / step_time, "episodes": episodes,
            "episode_wall_s": float(np.mean(episode_walls)), "sampling_share": act_time / (act_time + step_time)}


def bench_pettingzoo(name: str, seconds: float) -> dict:
    env = EdgeClusterEnv(name)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    rounds = slots = 0
    step_time = 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        task, node, alloc = random_feasible(env.batched_observations(), rng)
        actions = {a: {"task": int(task[i]) + 1, "node": int(node[i]), "alloc": alloc[i]}
                   for i, a in enumerate(env.agents)}
        t0 = time.perf_counter()
        obs, rew, term, trunc, info = env.step(actions)
        step_time += time.perf_counter() - t0
        rounds += 1
        slots += next(iter(info.values()))["slot_ended"] if info else 1
        if not env.agents:
            obs, _ = env.reset()
    return {"rounds_per_s": rounds / step_time, "slots_per_s": slots / step_time}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenarios", default="hetero-6,edge-default")
    ap.add_argument("--seconds", type=float, default=5.0, help="measuring time per scenario and mode")
    args = ap.parse_args()
    print(f"{'scenario':<14} {'mode':<12} {'rounds/s':>10} {'slots/s':>9} {'episode wall s':>15}")
    for name in args.scenarios.split(","):
        e = bench_engine(name, args.seconds)
        print(f"{name:<14} {'engine':<12} {e['rounds_per_s']:>10.0f} {e['slots_per_s']:>9.0f} "
              f"{e['episode_wall_s']:>15.3f}")
        p = bench_pettingzoo(name, args.seconds)
        print(f"{name:<14} {'pettingzoo':<12} {p['rounds_per_s']:>10.0f} {p['slots_per_s']:>9.0f} {'':>15}")
    print("target: >= 5000 rounds/s on hetero-6 (engine + observations, one process)")


if __name__ == "__main__":
    main()
