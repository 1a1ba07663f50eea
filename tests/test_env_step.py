"""`EdgeClusterEnv.step()` by hand: both action forms, the `realloc` encoding, conflicts, truncation
(and how the evaluation harness reports it), and that stepping builds no torch object.

Expected values come from DESIGN.md "Reference semantics" and the action encoding documented in
envs/edge_cluster.py (task 0 = nothing, i = window place i-1; realloc 0 = keep, k = set to k-1),
never from the code's own output.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from envs import EdgeClusterEnv
from tapfinger.sim.engine import FINISHED, RUNNING, WAITING
from tapfinger.evaluation.harness import EvalConfig, run_evaluation
from tapfinger.sim.workload import make_workload
from tests.helpers import load_or_skip, small, workload

REPO = Path(__file__).resolve().parent.parent


def env_with(name: str, tasks: list[tuple[int, str, list[int]]]) -> EdgeClusterEnv:
    """An env whose episode is the hand-made workload `tasks` (see tests.helpers.workload)."""
    env = EdgeClusterEnv(load_or_skip(name))
    env.reset(seed=0)
    env.engine.reset(0, workload=workload(env.scenario, tasks))
    return env


def test_dict_and_array_actions_realloc_encoding_and_conflicts():
    # synthetic-3: 3 clusters of one (16 cpu, 16 gpu) node, minimum (2, 1), switch_weight 0.5.
    # task 0: LM seen by cluster 0; task 1: IMG seen by clusters 1 and 2; task 2: IMG seen by 1.
    env = env_with("synthetic-3", [(0, "LM", [0]), (0, "IMG", [1, 2]), (0, "IMG", [1])])
    e = env.engine
    assert e.scenario.switch_weight == 0.5 and e.scenario.allow_preemption
    assert e.window[0, 0] == 0 and e.window[1, :2].tolist() == [1, 2] and e.window[2, 0] == 1

    # Round 1: cluster_0 starts place 0 (the LM) with (2, 4) by a Dict action; cluster_1 starts
    # place 1 (task 2) with (3, 2) by an array [task, node, cpu, gpu]; cluster_2 does nothing.
    obs, rewards, terms, truncs, infos = env.step({
        "cluster_0": {"task": 1, "node": 0, "alloc": np.array([2, 4])},
        "cluster_1": np.array([2, 0, 3, 2]),
        "cluster_2": {"task": 0, "node": 0, "alloc": np.array([0, 0])},
    })
    assert rewards == {"cluster_0": 0.0, "cluster_1": 0.0, "cluster_2": 0.0}  # the slot goes on
    assert not infos["cluster_0"]["slot_ended"] and e.slot == 0
    assert e.status[[0, 1, 2]].tolist() == [RUNNING, WAITING, RUNNING]
    assert (e.cluster[0], e.alloc[0].tolist()) == (0, [2, 4])
    assert (e.cluster[2], e.alloc[2].tolist()) == (1, [3, 2])
    assert e.node_free.tolist() == [[14, 12], [13, 14], [16, 16]]
    assert e.window[1, 1] == e.empty  # the started task's place stays empty within the slot
    assert obs["cluster_0"]["running_alloc"][0].tolist() == [2, 4]

    # Round 2: clusters 2 and 1 both pick task 1 (listed in that order): the lower index wins.
    obs, rewards, terms, truncs, infos = env.step({
        "cluster_2": np.array([1, 0, 4, 4]),
        "cluster_1": {"task": 1, "node": 0, "alloc": [2, 1]},
    })
    assert (e.cluster[1], e.alloc[1].tolist()) == (1, [2, 1])
    assert e.node_free.tolist() == [[14, 12], [11, 13], [16, 16]]
    assert [infos[a]["conflicts"] for a in env.possible_agents] == [0, 0, 1]
    assert [infos[a]["invalid_actions"] for a in env.possible_agents] == [0, 0, 0]
    assert e.window[2, 0] == e.empty and e.window[1, 0] == e.empty

    # Round 3: nobody starts, the slot ends. Rewards: minus the tasks in each cluster.
    obs, rewards, terms, truncs, infos = env.step({})
    assert infos["cluster_0"]["slot_ended"] and infos["cluster_0"]["slot"] == 1
    assert rewards == {"cluster_0": -1.0, "cluster_1": -2.0, "cluster_2": 0.0}
    p0 = math.tanh(4 / 16) * math.sqrt(1.2)
    assert e.progress[[0, 1, 2]] == pytest.approx([p0, 0.25, 0.25])

    # Slot 1, round 1: re-allocations only. cluster_0 sets its running place 0 (the LM) to
    # (2, 8), encoded [3, 9]; cluster_1 keeps place 0 (task 2, all zeros) and pauses place 1
    # (task 1: (0, 0), encoded [1, 1]). No start, so the slot ends.
    assert e.running[1, :2].tolist() == [2, 1]  # running places in start order
    M, R = e.M, e.R
    re0, re1 = np.zeros((M, R), dtype=np.int64), np.zeros((M, R), dtype=np.int64)
    re0[0] = [3, 9]
    re1[1] = [1, 1]
    obs, rewards, terms, truncs, infos = env.step({
        "cluster_0": {"task": 0, "node": 0, "alloc": np.zeros(R, dtype=np.int64), "realloc": re0},
        "cluster_1": {"task": 0, "node": 0, "alloc": np.zeros(R, dtype=np.int64), "realloc": re1},
    })
    assert infos["cluster_0"]["slot_ended"] and e.slot == 2
    assert [e.alloc[t].tolist() for t in (0, 1, 2)] == [[2, 8], [0, 0], [3, 2]]
    assert e.node_free.tolist() == [[14, 8], [13, 14], [16, 16]]
    assert rewards == {"cluster_0": -1.0, "cluster_1": -2.0, "cluster_2": 0.0}  # a paused task counts
    # the LM changed its allocation since the last slot end: half its amount with 8 GPUs; the
    # paused IMG is below its minimum: no progress; the kept IMG: its full 0.25
    p1 = p0 + 0.5 * math.tanh(8 / 16) * math.sqrt(1.2 - p0)
    assert e.progress[[0, 1, 2]] == pytest.approx([p1, 0.25, 0.5])
    assert obs["cluster_0"]["running_alloc"][0].tolist() == [2, 8]
    assert [infos[a]["invalid_actions"] for a in env.possible_agents] == [0, 0, 0]


def test_truncated_episode_ends_with_truncations_not_terminations():
    sc = small("synthetic-3", tasks=30, max_slots=3)
    env = EdgeClusterEnv(sc)
    env.reset(seed=0)
    for slot in range(3):
        assert env.agents == env.possible_agents
        obs, rewards, terms, truncs, infos = env.step({})  # nobody starts: every step ends a slot
        assert all(i["slot_ended"] for i in infos.values()) and len(infos) == 3
        last = slot == 2
        assert terms == {a: False for a in env.possible_agents}
        assert truncs == {a: last for a in env.possible_agents}
        assert set(rewards) == set(env.possible_agents)
    assert env.agents == []
    assert set(obs) == set(env.possible_agents)  # the final observation of every agent that was done
    assert env.engine.slot == 3 and env.engine.truncated
    assert (env.engine.status[: env.engine.T] != FINISHED).all()
    with pytest.raises(RuntimeError, match="finished episode"):
        env.step({})


def test_evaluation_reports_truncated_episodes_and_unfinished_tasks():
    # synthetic-3 cut at 4 slots, policy `min` (every task at its minimum (2, 1)). An IMG always
    # runs 4 slots and an LM at 1 GPU gains tanh(1/16) * sqrt(1.2 - p) < 0.07 per slot, so the
    # only tasks that finish are the IMGs that arrive at slot 0 (they all start at once: at most
    # 8 tasks at (2, 1) fit on a (16, 16) cluster), each with JCT 4.
    tasks, seeds = 30, [0, 2, 3]
    sc = small("synthetic-3", tasks=tasks, max_slots=4)
    img = [t.name for t in sc.task_types].index("IMG")
    finishing = {}
    for s in seeds:
        wl = make_workload(sc, s)
        at0 = wl.arrival_slot == 0
        assert 1 <= at0.sum() <= 8 and (wl.arrival_slot > 0).any()
        finishing[s] = int((at0 & (wl.task_type == img)).sum())
        assert finishing[s] >= 1
    res = run_evaluation(EvalConfig(sc, ["min"], seeds, workers=1, progress=False))
    entry = res["policies"]["min"]
    assert entry["truncated_episodes"] == len(seeds)
    assert entry["unfinished_tasks"] == sum(tasks - finishing[s] for s in seeds)
    assert entry["unfinished_tasks"] > 0
    assert entry["avg_jct"]["per_seed"] == [4.0] * len(seeds)  # over finished tasks only
    assert entry["invalid_actions"] == 0
    for s in seeds:
        m = res["_episodes"]["min"][s]
        assert m.truncated and m.unfinished == tasks - finishing[s]
        assert sorted(m.jct[m.jct >= 0].tolist()) == [4] * finishing[s]


STEP_WITHOUT_TORCH = """
import dataclasses, sys
import numpy as np
from envs import EdgeClusterEnv
from tapfinger.sim.scenario import load_scenario

for name in ("edge-default", "synthetic-3"):
    sc = load_scenario(name)
    sc = dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=25))
    env = EdgeClusterEnv(sc, render_mode="ansi")
    obs, _ = env.reset(seed=1)
    rng = np.random.default_rng(0)
    steps = 0
    while env.agents:
        actions = {}
        for a in env.agents:
            o = obs[a]
            task = int(rng.choice(np.flatnonzero(o["task_mask"])))
            act = {"task": task, "node": 0, "alloc": np.zeros(o["alloc_low"].shape[1], dtype=np.int64)}
            if task:
                node = int(rng.choice(np.flatnonzero(o["node_mask"][task - 1])))
                act["node"] = node
                act["alloc"] = rng.integers(o["alloc_low"][task - 1], o["alloc_high"][node] + 1)
            if sc.allow_preemption and (o["running_id"] >= 0).any():
                act["realloc"] = np.where(o["running_id"][:, None] >= 0, o["running_alloc"] + 1, 0)  # = keep
            actions[a] = act
        obs, *_ = env.step(actions)
        env.state()
        env.render()
        steps += 1
    assert steps > 10 and env.engine.done and not env.engine.truncated, steps
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torch_geometric")))
"""


def test_env_step_builds_no_torch_object():
    # DESIGN.md: the simulator core and envs/ sit below the learned agents; an env episode (both
    # Dict actions with re-allocation, state() and render()) must not import torch at all.
    proc = subprocess.run([sys.executable, "-c", STEP_WITHOUT_TORCH], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
