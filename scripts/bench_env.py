"""Environment throughput: rounds and slots per second with random feasible actions.

    python scripts/bench_env.py [--scenarios hetero-6,edge-default] [--seconds 5]

Measures (1) whole episodes through `envs.episode.run_episode`, the engine with batched
observations (what the evaluation harness and trainers use), and (2) the PettingZoo `step()` with per-agent dict actions and observations. Action
sampling is timed separately and excluded from the rates. Also the wall time of one full episode.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from envs import EdgeClusterEnv
from envs.actions import RoundActions, random_feasible
from envs.episode import run_episode
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import load_scenario


class RandomFeasible:
    """Random feasible actions (`envs.actions.random_feasible`), timing its own sampling."""

    name = "random-feasible"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.seconds = 0.0

    def act(self, obs: dict) -> RoundActions:
        t0 = time.perf_counter()
        out = random_feasible(obs, self.rng, p_pass=0.3)
        self.seconds += time.perf_counter() - t0
        return out


def bench_engine(name: str, seconds: float) -> dict:
    """Whole episodes through `envs.episode.run_episode` (the loop every driver uses)."""
    sc = load_scenario(name)
    eng = Engine(sc)
    policy = RandomFeasible(0)
    rounds = slots = 0
    walls, step_time = [], 0.0
    t_end = time.perf_counter() + seconds
    seed = 0
    while time.perf_counter() < t_end or not walls:
        sampling_before = policy.seconds
        t0 = time.perf_counter()
        result = run_episode(sc, policy, seed, engine=eng)
        wall = time.perf_counter() - t0
        walls.append(wall)
        step_time += wall - (policy.seconds - sampling_before)
        rounds += result.rounds
        slots += result.slots
        seed += 1
    return {"rounds_per_s": rounds / step_time, "slots_per_s": slots / step_time, "episodes": len(walls),
            "episode_wall_s": float(np.mean(walls)), "sampling_share": policy.seconds / sum(walls)}


def bench_pettingzoo(name: str, seconds: float) -> dict:
    env = EdgeClusterEnv(name)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    rounds = slots = 0
    step_time = 0.0
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        act = random_feasible(env.batched_observations(), rng, p_pass=0.3)
        actions = {a: {"task": int(act.task[i]) + 1, "node": int(act.node[i]), "alloc": act.alloc[i]}
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
