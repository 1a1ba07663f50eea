"""Issue 11, items 10, 11 and 15: a strict round is validated before any of it is applied; every
malformed action is an `InvalidActionError` (strict) or a counted invalid action (default); the
`random` baseline follows the authors' rule of DESIGN.md.

Expected values come from the action encoding documented in envs/edge_cluster.py and README
("Action": task 0 = nothing, i = window place i-1; realloc 0 = keep, k = set to k-1) and from
DESIGN.md "Heuristics to compare against", never from the code's own output.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from agents.heuristics.simple import RandomPolicy
from envs import EdgeClusterEnv
from envs.episode import run_episode
from tapfinger.sim.engine import Engine, InvalidActionError
from tests.helpers import load_or_skip, small, workload

# ----------------------------------------------------------------------------- item 15: random


def hand_obs(window_id, task_ok, alloc_low, alloc_high, node_ok=None):
    """Batched observations of one-node clusters with the keys `random` reads.

    window_id [N, W] (-1 = empty), task_ok [N, W] (the task mask without "nothing"), alloc_low
    [N, W, R] (minimum), alloc_high [N, R] (min(grid max, free) of the cluster's one node)."""
    window_id = np.asarray(window_id)
    task_ok = np.asarray(task_ok, dtype=np.int64)
    N = window_id.shape[0]
    node_ok = task_ok if node_ok is None else np.asarray(node_ok, dtype=np.int64)
    return {
        "window_id": window_id,
        "task_mask": np.concatenate([np.ones((N, 1), dtype=np.int64), task_ok], axis=1),
        "node_mask": node_ok[:, :, None],
        "node_id": np.arange(N)[:, None],
        "alloc_low": np.asarray(alloc_low),
        "alloc_high": np.asarray(alloc_high)[:, None, :],
    }


def test_random_draws_place_uniformly_then_nothing_or_the_joint_box_uniformly():
    # One agent, two occupied places. Place 0: minimum (1, 1) under a node limit (2, 3): a box
    # of 2 x 3 = 6 allocations, plus "nothing": each of the 7 outcomes has probability 1/2 * 1/7.
    # Place 1: minimum (2, 1): box 1 x 3 = 3, plus nothing: 1/2 * 1/4 each. Passing: 1/14 + 1/8.
    # (The old rule passed with 1/(k+1) = 1/3 and drew each resource independently.)
    obs = hand_obs([[7, 9]], [[1, 1]], [[[1, 1], [2, 1]]], [[2, 3]])
    expected = {"pass": 1 / 14 + 1 / 8}
    expected.update({(0, c, g): 1 / 14 for c in (1, 2) for g in (1, 2, 3)})
    expected.update({(1, 2, g): 1 / 8 for g in (1, 2, 3)})
    assert sum(expected.values()) == pytest.approx(1.0)
    pol = RandomPolicy(None, seed=0)
    pol.reset(123)
    counts: Counter = Counter()
    n = 14_000
    for _ in range(n):
        act = pol.act(obs)
        if act.task[0] < 0:
            counts["pass"] += 1
        else:
            assert act.node[0] == 0
            counts[(int(act.task[0]), *act.alloc[0].tolist())] += 1
    assert set(counts) <= set(expected), "an outcome outside {nothing} and the box"
    keys = sorted(expected, key=str)
    stat = chisquare([counts[k] for k in keys], [n * expected[k] for k in keys])
    assert stat.pvalue > 1e-3, (stat, counts)


def test_random_pass_frequency_on_the_trace_grid_is_one_in_129():
    # DESIGN.md: on the trace grid (16 CPU, 8 GPU; minimum (1, 1); a free node) the box holds
    # 16 x 8 = 128 allocations, so drawing "nothing" happens about 1 time in 129.
    obs = hand_obs([[3]], [[1]], [[[1, 1]]], [[16, 8]])
    pol = RandomPolicy(None, seed=0)
    pol.reset(5)
    n = 129 * 200
    passes = sum(pol.act(obs).task[0] < 0 for _ in range(n))
    assert abs(passes - 200) < 4 * np.sqrt(200)  # 4 sigma of a binomial(n, 1/129)


def test_random_passes_when_the_picked_task_does_not_fit():
    # The only occupied place holds a task whose minimum does not fit: always pass.
    obs = hand_obs([[-1, 5]], [[0, 0]], [[[0, 0], [3, 3]]], [[1, 1]])
    pol = RandomPolicy(None, seed=0)
    pol.reset(1)
    assert all(pol.act(obs).task[0] == -1 for _ in range(200))


def test_random_pick_claims_the_task_for_the_round_even_when_it_draws_nothing():
    # Both agents see task 4 (box of one allocation (1, 1), so agent 0 draws "nothing" half the
    # time); agent 1 also sees task 6. Agent 0 always picks task 4, which claims it for the round:
    # agent 1 never starts task 4, not even in the rounds where agent 0 passes; it starts task 6.
    obs = hand_obs([[4, -1], [4, 6]], [[1, 0], [1, 1]],
                   [[[1, 1], [0, 0]], [[1, 1], [1, 1]]], [[1, 1], [1, 1]])
    pol = RandomPolicy(None, seed=0)
    pol.reset(7)
    seen: Counter = Counter()
    for _ in range(1000):
        act = pol.act(obs)
        seen[(int(act.task[0]), int(act.task[1]))] += 1
    assert all(t1 != 0 for _, t1 in seen), seen
    assert seen[(-1, 1)] > 0 and seen[(0, 1)] > 0 and seen[(-1, -1)] > 0, seen


def test_random_is_always_feasible_over_whole_episodes():
    for name in ("synthetic-3", "hetero-6", "edge-default"):
        sc = small(name, tasks=30)
        res = run_episode(sc, RandomPolicy(sc), seed=3, engine=Engine(sc, strict=True))
        assert res.invalid_actions == 0 and not res.truncated


# ----------------------------------------------------------------------------- item 10: no half-step


# synthetic-3: 3 clusters of one (16 cpu, 16 gpu) node, grid (16, 16), minimum (2, 1), W = 10.
# Task 0 (LM) is seen by cluster 0, task 1 (IMG) by cluster 1, task 2 (IMG) by clusters 1 and 2.
TASKS = [(0, "LM", [0]), (0, "IMG", [1]), (0, "IMG", [1, 2]), (1, "IMG", [0])]


def fresh_env(strict: bool) -> EdgeClusterEnv:
    env = EdgeClusterEnv(load_or_skip("synthetic-3"), strict=strict)
    env.reset(seed=0)
    env.engine.reset(0, workload=workload(env.scenario, TASKS))
    env._observe()  # the observations of the hand-made workload, as reset() would give them
    return env


def engine_state(env: EdgeClusterEnv) -> dict:
    """Everything about the episode the engine holds (its static tables excluded)."""
    out = {}
    for key, value in vars(env.engine).items():
        if key in ("scenario", "static", "workload"):
            continue
        if isinstance(value, np.ndarray):
            out[key] = value.copy()
        elif isinstance(value, list):  # the queues
            out[key] = [list(q) for q in value]
        else:
            out[key] = value
    out["_batched"] = {k: v.copy() for k, v in env.batched_observations().items()}
    out["_agents"] = list(env.agents)
    return out


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if key == "_batched":
            for k, v in value.items():
                np.testing.assert_array_equal(v, b[key][k], err_msg=k)
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b[key], err_msg=key)
        else:
            assert value == b[key], key


def test_strict_round_with_a_bad_later_agent_changes_nothing_and_the_corrected_retry_works():
    env = fresh_env(strict=True)
    good0 = {"task": 1, "node": 0, "alloc": np.array([2, 4])}
    bad1 = {"task": 1, "node": 0, "alloc": np.array([1, 1])}  # below IMG's minimum (2, 1)
    before = engine_state(env)
    with pytest.raises(InvalidActionError, match="cluster_1.*below the task type's minimum"):
        env.step({"cluster_0": good0, "cluster_1": bad1})
    assert_same_state(before, engine_state(env))  # agent 0's task did not start, no round counted
    assert env.engine.round == 0 and env.engine.status[0] != 2

    fixed = {"cluster_0": good0, "cluster_1": {"task": 1, "node": 0, "alloc": np.array([2, 1])}}
    got = env.step(fixed)
    clean = fresh_env(strict=True)
    want = clean.step(fixed)
    assert_same_state(engine_state(clean), engine_state(env))
    assert got[1:] == want[1:]  # rewards, terminations, truncations, infos
    for agent in want[0]:
        for k in want[0][agent]:
            np.testing.assert_array_equal(got[0][agent][k], want[0][agent][k])
    assert env.engine.status[[0, 1]].tolist() == [2, 2]


def test_strict_round_with_a_valid_realloc_then_a_start_that_only_fits_after_it():
    # Validating the round before applying it must see an agent's own re-allocation first, as
    # play_round does: cluster_0 frees GPUs by shrinking its LM, then starts a task in them.
    env = fresh_env(strict=True)
    env.step({"cluster_0": {"task": 1, "node": 0, "alloc": np.array([2, 16])}})
    env.step({})  # the slot ends; task 3 (IMG, cluster 0) arrives at slot 1
    e = env.engine
    assert e.window[0].tolist()[0] == 3 and e.node_free[0].tolist() == [14, 0]
    realloc = np.zeros((e.M, e.R), dtype=np.int64)
    realloc[0] = [3, 9]  # the LM to (2, 8)
    before = engine_state(env)
    with pytest.raises(InvalidActionError, match="cluster_0.*exceeds node 0's free"):
        env.step({"cluster_0": {"task": 1, "node": 0, "alloc": np.array([2, 9]), "realloc": realloc}})
    assert_same_state(before, engine_state(env))
    env.step({"cluster_0": {"task": 1, "node": 0, "alloc": np.array([2, 8]), "realloc": realloc}})
    assert e.node_free[0].tolist() == [12, 0] and e.alloc[[0, 3]].tolist() == [[2, 8], [2, 8]]


# ----------------------------------------------------------------------------- item 11: no coercion

GOOD0 = {"task": 1, "node": 0, "alloc": np.array([2, 4])}  # cluster_0 starts its LM at (2, 4)


def realloc_with(env, row, values):
    re = np.zeros((env.engine.M, env.engine.R), dtype=np.int64)
    re[row] = values
    return re


# (cluster_1's action, the key the message must name). synthetic-3: W = 10 (task 0..10), one node
# per cluster (node 0), grid (16, 16) (alloc 0..16 each, realloc 0..17 each, 0 = keep).
MALFORMED = {
    "negative task": ({"task": -1, "node": 0, "alloc": [2, 1]}, "'task'"),
    "negative task in an array": (np.array([-3, 0, 2, 1]), "array action"),
    "negative realloc": (lambda env: {"task": 0, "realloc": realloc_with(env, 0, [-1, -1])}, "'realloc'"),
    "negative alloc": ({"task": 1, "node": 0, "alloc": [-2, 1]}, "'alloc'"),
    "negative node": ({"task": 1, "node": -1, "alloc": [2, 1]}, "'node'"),
    "fractional task": ({"task": 1.5, "node": 0, "alloc": [2, 1]}, "'task'"),
    "fractional alloc": ({"task": 1, "node": 0, "alloc": [2.7, 1]}, "'alloc'"),
    "string task": ({"task": "1", "node": 0, "alloc": [2, 1]}, "'task'"),
    "bool task": ({"task": True, "node": 0, "alloc": [2, 1]}, "'task'"),
    "bool alloc": ({"task": 1, "node": 0, "alloc": np.array([True, True])}, "'alloc'"),
    "bool in an alloc list": ({"task": 1, "node": 0, "alloc": [True, 1]}, "'alloc'"),
    "nan task": ({"task": float("nan"), "node": 0, "alloc": [2, 1]}, "'task'"),
    "inf alloc": ({"task": 1, "node": 0, "alloc": [np.inf, 1]}, "'alloc'"),
    "string action": ("start task 1", "array action"),
    "short alloc": ({"task": 1, "node": 0, "alloc": [2]}, "'alloc'"),
    "2-d alloc": ({"task": 1, "node": 0, "alloc": [[2, 1]]}, "'alloc'"),
    "flat realloc": (lambda env: {"task": 0, "realloc": np.zeros(env.engine.M * env.engine.R, dtype=int)},
                     "'realloc'"),
    "huge task": ({"task": 2**70, "node": 0, "alloc": [2, 1]}, "'task'"),
    "uint64 alloc beyond int64": ({"task": 1, "node": 0, "alloc": np.array([2**63, 1], dtype=np.uint64)}, "'alloc'"),
    "huge alloc in an array": ([1, 0, 2**70, 1], "array action"),
    "ragged list action": ([1, 0, [2, 1]], "array action"),
    "nested list action": ([[1, 0], [2, 1]], "array action"),
    "list as task": ({"task": [1, 2], "node": 0, "alloc": [2, 1]}, "'task'"),
    "unknown action key": ({"task": 1, "node": 0, "allocation": [2, 1]}, "'allocation'"),
    "task beyond the window": ({"task": 11, "node": 0, "alloc": [2, 1]}, "'task'"),
    "node beyond the nodes": ({"task": 1, "node": 1, "alloc": [2, 1]}, "'node'"),
    "alloc beyond the grid": ({"task": 1, "node": 0, "alloc": [2, 17]}, "'alloc'"),
    "realloc beyond the grid": (lambda env: {"task": 0, "realloc": realloc_with(env, 0, [3, 18])}, "'realloc'"),
}


def bad_action(env, case):
    act = MALFORMED[case][0]
    return act(env) if callable(act) else act


@pytest.mark.parametrize("case", list(MALFORMED))
def test_strict_malformed_action_names_agent_key_and_form_and_changes_nothing(case):
    env = fresh_env(strict=True)
    key = MALFORMED[case][1]
    before = engine_state(env)
    with pytest.raises(InvalidActionError) as info:
        env.step({"cluster_0": GOOD0, "cluster_1": bad_action(env, case)})
    msg = str(info.value)
    assert "cluster_1" in msg and key in msg and "expected" in msg, msg
    assert_same_state(before, engine_state(env))


@pytest.mark.parametrize("case", list(MALFORMED))
def test_default_malformed_action_is_a_counted_no_op(case):
    env = fresh_env(strict=False)
    _, _, _, _, infos = env.step({"cluster_0": GOOD0, "cluster_1": bad_action(env, case)})
    assert [infos[a]["invalid_actions"] for a in env.possible_agents] == [0, 1, 0]
    e = env.engine
    assert e.status[:3].tolist() == [2, 1, 1]  # cluster_0's LM started; cluster_1 started nothing
    assert e.node_free.tolist() == [[14, 12], [16, 16], [16, 16]]


def test_integral_floats_and_numpy_integers_are_taken_exactly():
    # Not a coercion: 1.0 is the integer 1 (some policies emit float arrays); numpy ints as well.
    env = fresh_env(strict=True)
    env.step({"cluster_0": {"task": 1.0, "node": np.int32(0), "alloc": np.array([2.0, 4.0])},
              "cluster_1": np.array([1, 0, 2, 1], dtype=np.uint8)})
    assert env.engine.alloc[[0, 1]].tolist() == [[2, 4], [2, 1]]


@pytest.mark.parametrize("strict", [True, False])
def test_unknown_agent_key_is_an_error_in_both_modes(strict):
    # Default mode counts an invalid action against its agent; a key that is no agent has none to
    # count against, and its action would be lost unnoticed: an error in both modes.
    env = fresh_env(strict=strict)
    before = engine_state(env)
    with pytest.raises(InvalidActionError, match=r"'cluster0'.*expected.*cluster_0"):
        env.step({"cluster_0": GOOD0, "cluster0": GOOD0})
    assert_same_state(before, engine_state(env))


@pytest.mark.parametrize("strict", [True, False])
def test_actions_that_are_no_dict_of_agents_are_an_error_in_both_modes(strict):
    env = fresh_env(strict=strict)
    with pytest.raises(InvalidActionError, match="expected a dict of agent name -> action"):
        env.step([GOOD0, GOOD0, GOOD0])


def test_documented_do_nothing_encodings_stay_valid():
    # task 0 = nothing; a realloc row of zeros = keep; an absent key or None = its default.
    env = fresh_env(strict=True)
    env.step({"cluster_0": GOOD0})
    zeros = np.zeros((env.engine.M, env.engine.R), dtype=np.int64)
    _, _, _, _, infos = env.step({"cluster_0": {"task": 0, "node": 0, "alloc": [0, 0], "realloc": zeros},
                                  "cluster_1": {"task": 0}, "cluster_2": None})
    assert infos["cluster_0"]["slot_ended"] and env.engine.alloc[0].tolist() == [2, 4]


# ----------------------------------------------------------------------------- item 11: garbage

SCALARS = st.one_of(st.integers(-5, 20), st.integers(-2**80, 2**80), st.floats(allow_nan=True),
                    st.booleans(), st.none(), st.text(max_size=3), st.sampled_from([np.int64(1), np.uint64(2**63),
                                                                                     np.float32(2.0), np.bool_(True)]))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=5), st.lists(st.lists(SCALARS, max_size=3), max_size=3),
                   st.builds(lambda n, shape: np.full(shape, n), st.integers(-3, 20),
                             st.sampled_from([(), (1,), (2,), (3,), (4,), (2, 2), (4, 2), (8, 2)])))
KEYS = st.sampled_from(["task", "node", "alloc", "realloc", "tsk", 0])
ACTIONS = st.one_of(VALUES, st.dictionaries(KEYS, VALUES, max_size=4))
AGENTS = st.sampled_from(["cluster_0", "cluster_1", "cluster_2"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=st.dictionaries(AGENTS, ACTIONS, max_size=3), strict=st.booleans())
def test_garbage_actions_raise_only_invalid_action_error_and_never_corrupt(actions, strict):
    env = fresh_env(strict=strict)
    env.step({"cluster_0": GOOD0})  # something running, for re-allocations to act on
    before = engine_state(env)
    try:
        env.step(actions)
    except InvalidActionError:
        assert strict, "default mode counts invalid actions, it does not raise"
        assert_same_state(before, engine_state(env))
        return
    e = env.engine
    cap = e.static.node_capacity
    assert (e.node_free >= 0).all() and (e.node_free <= cap).all()
    used = np.zeros_like(cap)
    live = e.running[e.running != e.empty]
    np.add.at(used, e.node[live], e.alloc[live])
    np.testing.assert_array_equal(used, cap - e.node_free)
    assert (e.alloc[live] <= e.static.grid_max).all()
