"""Decision latency of the TapFinger policy: eager PyTorch vs the exported programs.

    python scripts/bench_export.py [--scenarios hetero-6,large] [--rounds 200] [--repeat 5]

For each scenario: a network of the default size (hidden 64, 2 layers, 2 heads; the weights do
not change the latency) is saved as a checkpoint and exported to ONNX and .pt2; a greedy episode
of the exported policy records observations of rounds in which at least one agent decides; then
`policy.act(obs)` of each policy is timed on the same recorded rounds (blocks of rounds per
policy, block order rotating between repeats), on one CPU
thread (torch and onnxruntime). Reported per round (one `act` call: graph arrays, one forward
for all deciding agents, conflict resolution) and per agent decision (the round's time divided
by the number of agents deciding in it), p50 and p99, with ratios to eager from the same run.

`large` is synthetic-6 widened with dataclasses.replace: 64 clusters, window 320 places,
250 arrivals per slot; rounds are recorded once at least 500 tasks are pending (distinct
tasks in the windows).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agents.exported import ExportedPolicy
from agents.learned.checkpoint import save_checkpoint
from agents.learned.export import export_files
from agents.learned.model import ModelConfig, TapFingerNet
from agents.learned.policy import LearnedPolicy
from envs.episode import RoundInfo, run_episode
from tapfinger.sim.scenario import Cluster, Scenario, load_scenario

LARGE_CLUSTERS = 64
LARGE_WINDOW = 320
LARGE_RATE = 250.0
LARGE_MIN_PENDING = 500


def large_scenario() -> Scenario:
    base = load_scenario("synthetic-6")
    clusters = tuple(Cluster(name=f"c{i}", nodes=base.clusters[0].nodes) for i in range(LARGE_CLUSTERS))
    return dataclasses.replace(base, name="large-64", clusters=clusters, window_size=LARGE_WINDOW,
                               arrivals=dataclasses.replace(base.arrivals, rate=LARGE_RATE, tasks=6000))


def scenario_by_name(name: str) -> Scenario:
    return large_scenario() if name == "large" else load_scenario(name)


def pending_count(obs: dict[str, np.ndarray]) -> int:
    ids = obs["window_id"]
    return int(np.unique(ids[ids >= 0]).size)


class _Enough(Exception):
    """Raised from `on_round` to end the recording episode once enough rounds are recorded."""


def record_rounds(sc: Scenario, policy, count: int, min_pending: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Observations of `count` rounds in which some agent decides, once `min_pending` tasks wait."""
    out = []

    def on_round(info: RoundInfo) -> None:
        if info.obs["task_mask"][:, 1:].any() and pending_count(info.obs) >= min_pending:
            out.append(info.obs)
        if len(out) >= count:
            raise _Enough  # the one episode loop has no stop condition of its own

    try:
        run_episode(sc, policy, seed, on_round=on_round)
    except _Enough:
        pass
    if len(out) < count:
        print(f"  note: the episode ended after {len(out)} recorded rounds (asked {count})")
    return out


def deciding(obs: dict[str, np.ndarray]) -> int:
    # The agents that run the network in a round: those with a startable task (single-task mode).
    return int(obs["task_mask"][:, 1:].any(axis=1).sum())


def time_policies(policies: dict[str, object], rounds: list[dict], repeat: int) -> dict[str, np.ndarray]:
    """Seconds per act() call, [repeat * rounds] in round order. Each repeat runs every policy over
    all rounds in a block (as in an episode: the policy's working set stays in cache), the order of
    the blocks rotating from one repeat to the next, so that changes of machine load hit all alike."""
    names = list(policies)
    times = {name: np.zeros((repeat, len(rounds))) for name in names}
    for p in policies.values():  # warm-up: first calls allocate and (ORT) plan memory
        for obs in rounds[:3]:
            p.act(obs)
    for r in range(repeat):
        for name in names[r % len(names):] + names[:r % len(names)]:
            p = policies[name]
            for k, obs in enumerate(rounds):
                t0 = time.perf_counter()
                p.act(obs)
                times[name][r, k] = time.perf_counter() - t0
    return {k: v.ravel() for k, v in times.items()}


def disagreements(policies: dict[str, object], rounds: list[dict]) -> dict[str, int]:
    eager = policies["eager"]
    out = {}
    for name, p in policies.items():
        if name == "eager":
            continue
        n = 0
        for obs in rounds:
            a, b = eager.act(obs), p.act(obs)
            n += int(not (np.array_equal(a.task, b.task) and np.array_equal(a.node, b.node)
                          and np.array_equal(a.alloc, b.alloc)))
        out[name] = n
    return out


def bench(name: str, rounds: int, repeat: int, workdir: Path, hidden: int) -> list[dict]:
    sc = scenario_by_name(name)
    torch.manual_seed(0)
    net = TapFingerNet(ModelConfig.for_scenario(sc, hidden=hidden))
    ckpt = save_checkpoint(workdir / f"{sc.name}.pt", net=net, scenario=sc, acting={}, step=0)
    t0 = time.perf_counter()
    export_files(ckpt, {"onnx": workdir / f"{sc.name}.onnx", "pt2": workdir / f"{sc.name}.pt2"},
                 scenario=sc, verify=False)
    print(f"{sc.name}: exported onnx and pt2 in {time.perf_counter() - t0:.1f} s")
    policies = {"eager": LearnedPolicy(sc, checkpoint=str(ckpt)),
                "onnxruntime": ExportedPolicy(sc, path=workdir / f"{sc.name}.onnx", kind="onnx"),
                "pt2": ExportedPolicy(sc, path=workdir / f"{sc.name}.pt2", kind="pt2")}
    min_pending = LARGE_MIN_PENDING if name == "large" else 0
    recorded = record_rounds(sc, policies["onnxruntime"], rounds, min_pending)
    agents = np.array([deciding(o) for o in recorded])
    pending = np.array([pending_count(o) for o in recorded])
    print(f"{sc.name}: {len(recorded)} rounds, {sc.num_clusters} clusters, agents deciding per round "
          f"{agents.mean():.1f} (max {agents.max()}), pending tasks {pending.mean():.0f} "
          f"(min {pending.min()}, max {pending.max()})")
    differ = disagreements(policies, recorded)
    times = time_policies(policies, recorded, repeat)
    per_agent_div = np.tile(agents, repeat)
    rows = []
    for pol, t in times.items():
        per_agent = t / per_agent_div
        rows.append({"scenario": sc.name, "policy": pol, "round_p50": np.percentile(t, 50) * 1e3,
                     "round_p99": np.percentile(t, 99) * 1e3, "agent_p50": np.percentile(per_agent, 50) * 1e3,
                     "agent_p99": np.percentile(per_agent, 99) * 1e3, "differ": differ.get(pol, 0),
                     "rounds": len(recorded)})
    eager = rows[0]
    for r in rows:
        r["speedup"] = eager["round_p50"] / r["round_p50"]
    return rows


def print_table(rows: list[dict]) -> None:
    head = (f"{'scenario':<12} {'policy':<12} {'round p50':>10} {'round p99':>10} {'agent p50':>10} "
            f"{'agent p99':>10} {'x eager':>8} {'rounds differ':>14}")
    print("\nlatency in ms, one CPU thread")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['scenario']:<12} {r['policy']:<12} {r['round_p50']:>10.3f} {r['round_p99']:>10.3f} "
              f"{r['agent_p50']:>10.3f} {r['agent_p99']:>10.3f} {r['speedup']:>7.1f}x "
              f"{str(r['differ']) + '/' + str(r['rounds']):>14}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default="hetero-6,large", help="names; 'large' = 64 clusters, >= 500 pending")
    ap.add_argument("--rounds", type=int, default=200, help="recorded rounds per scenario (large: at most 40)")
    ap.add_argument("--repeat", type=int, default=5, help="timings of each round per policy")
    ap.add_argument("--hidden", type=int, default=64, help="hidden size of the network (default 64)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # onnxruntime is given one thread by ExportedPolicy(threads=1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [s.strip() for s in args.scenarios.split(",") if s.strip()]:
            n = min(args.rounds, 40) if name == "large" else args.rounds
            rows += bench(name, n, args.repeat if name != "large" else max(1, args.repeat // 2), Path(tmp), args.hidden)
    print_table(rows)


if __name__ == "__main__":
    main()
