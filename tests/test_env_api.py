"""PettingZoo conformance, determinism over whole episodes, and the graph view."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import pytest
from pettingzoo.test import api_test, parallel_api_test, parallel_seed_test
from pettingzoo.utils.conversions import parallel_to_aec

from envs import ENV_ID, EdgeClusterEnv, make
from tapfinger.sim.scenario import builtin_names
from tests.helpers import random_feasible_env_action, scenario_params, small

BUILTINS = builtin_names()

# The only warnings the PettingZoo checks may give. All three are `api_test`'s advice for simple
# spaces, and our spaces are Dict on purpose (DESIGN.md, "Known traps": padded Dict observations
# with masks, since no RL library reads Graph spaces): an observation that is a dict rather than
# one array, and observation / action spaces that are not Box or Discrete. Any other warning
# (NaN or infinite observations, an all-zero action mask, a copied space, a non-numeric reward,
# a NumPy RuntimeWarning from our own step, ...) fails the test.
ALLOWED_WARNINGS = {
    (UserWarning, "Observation is not a NumPy array"),
    (UserWarning, "Observation space for each agent probably should be gymnasium.spaces.box or "
                  "gymnasium.spaces.discrete"),
    (UserWarning, "Action space for each agent probably should be gymnasium.spaces.box or "
                  "gymnasium.spaces.discrete"),
}


@contextmanager
def only_allowed_warnings():
    """Record every warning (none silenced, none deduplicated) and fail on any not allowed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    unexpected = sorted({f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
                         if (w.category, str(w.message)) not in ALLOWED_WARNINGS})
    assert not unexpected, "unexpected warnings:\n" + "\n".join(unexpected)


@pytest.mark.parametrize("name", scenario_params(BUILTINS))
def test_parallel_api(name):
    with only_allowed_warnings():
        parallel_api_test(EdgeClusterEnv(name), num_cycles=300)


@pytest.mark.parametrize("name", scenario_params(BUILTINS))
def test_aec_api_checks_observations_in_space(name):
    with only_allowed_warnings():
        api_test(parallel_to_aec(EdgeClusterEnv(name)), num_cycles=150)


@pytest.mark.parametrize("name", ["synthetic-3", "edge-default"])
def test_seed_test(name):
    with only_allowed_warnings():
        parallel_seed_test(lambda: EdgeClusterEnv(name))


def test_only_allowed_warnings_fails_on_any_other_warning():
    with pytest.raises(AssertionError, match="unexpected warnings:\n.*Observation contains NaNs"):
        with only_allowed_warnings():
            warnings.warn("Observation is not a NumPy array")  # allowed
            warnings.warn("Observation contains NaNs")
    with pytest.raises(AssertionError, match="RuntimeWarning: invalid value"):
        with only_allowed_warnings():
            warnings.warn("invalid value encountered in sqrt", RuntimeWarning)


def test_observations_stay_in_space_over_a_full_episode_of_feasible_actions():
    env = EdgeClusterEnv(small("edge-default", tasks=40))
    obs, _ = env.reset(seed=3)
    rng = np.random.default_rng(0)
    space = env.observation_space(env.possible_agents[0])
    while env.agents:
        for o in obs.values():
            assert space.contains(o)
        obs, *_ = env.step({a: random_feasible_env_action(obs[a], rng) for a in env.agents})


def play_episode(scenario, seed: int, action_seed: int = 0):
    env = EdgeClusterEnv(scenario)
    obs, _ = env.reset(seed=seed)
    rng = np.random.default_rng(action_seed)
    trajectory = []
    while env.agents:
        actions = {a: random_feasible_env_action(obs[a], rng) for a in env.agents}
        obs, rewards, terms, truncs, infos = env.step(actions)
        trajectory.append(({a: {k: v.copy() for k, v in o.items()} for a, o in obs.items()}, rewards))
    assert all(terms.values()) and not any(truncs.values())
    return trajectory, env.engine.task_records()


def assert_same(t1, t2):
    assert len(t1) == len(t2)
    for (o1, r1), (o2, r2) in zip(t1, t2):
        assert r1 == r2
        assert o1.keys() == o2.keys()
        for a in o1:
            for k in o1[a]:
                np.testing.assert_array_equal(o1[a][k], o2[a][k])


@pytest.mark.parametrize("name", ["hetero-6", "edge-default"])
def test_full_episode_determinism(name):
    sc = small(name, tasks=60)
    t1, rec1 = play_episode(sc, seed=11)
    t2, rec2 = play_episode(sc, seed=11)
    assert_same(t1, t2)
    for k in rec1:
        np.testing.assert_array_equal(rec1[k], rec2[k])
    t3, rec3 = play_episode(sc, seed=12)
    assert not np.array_equal(rec1["arrival"], rec3["arrival"]) or not np.array_equal(rec1["type"], rec3["type"])


def test_arrivals_do_not_depend_on_actions():
    sc = small("synthetic-3", tasks=50)
    _, rec1 = play_episode(sc, seed=5, action_seed=1)
    _, rec2 = play_episode(sc, seed=5, action_seed=2)
    np.testing.assert_array_equal(rec1["arrival"], rec2["arrival"])
    np.testing.assert_array_equal(rec1["type"], rec2["type"])


def test_make_by_id_and_render():
    env = make(ENV_ID, scenario="hetero-6", render_mode="ansi")
    env.reset(seed=0)
    text = env.render()
    assert "slot 0" in text and "window:" in text
    with pytest.raises(ValueError, match="unknown environment id"):
        make("tapfinger/nope-v0")


def test_registered_in_pettingzoos_registry_as_parallel_and_aec():
    import importlib

    import pettingzoo

    import envs

    par = pettingzoo.make("parallel", ENV_ID, scenario="hetero-6")
    assert isinstance(par, EdgeClusterEnv) and isinstance(par, pettingzoo.ParallelEnv)
    aec = pettingzoo.make("aec", ENV_ID, scenario="hetero-6")
    assert isinstance(aec, pettingzoo.AECEnv)
    aec.reset(seed=0)
    assert aec.possible_agents == par.possible_agents and aec.agent_selection == "cluster_0"
    aec.step(random_feasible_env_action(aec.observe("cluster_0"), np.random.default_rng(0)))
    assert aec.agent_selection == "cluster_1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # importing again must not "override" our own registration
        importlib.reload(envs)
    assert len(pettingzoo.make("parallel", ENV_ID, scenario="synthetic-3").possible_agents) == 3


def test_state_has_declared_shape():
    env = EdgeClusterEnv("edge-default")
    env.reset(seed=0)
    assert env.state().shape == env.state_space.shape
    assert env.state_space.contains(env.state())


def test_invalid_actions_counted_not_raised_by_default():
    env = EdgeClusterEnv("synthetic-3")
    obs, _ = env.reset(seed=0)
    bad = {a: {"task": 10, "node": 0, "alloc": np.array([16, 16])} for a in env.agents}
    bad[env.agents[0]] = {"task": 1, "node": 0, "alloc": np.array([0, 0])}  # below minimum
    _, _, _, _, infos = env.step(bad)
    assert infos["cluster_0"]["invalid_actions"] == 1


def test_strict_env_raises_on_malformed_array_action():
    env = EdgeClusterEnv("synthetic-3", strict=True)
    env.reset(seed=0)
    from tapfinger.sim.engine import InvalidActionError
    with pytest.raises(InvalidActionError, match="array action must have 4 entries"):
        env.step({"cluster_0": np.array([1, 0])})


def test_hetero_graph_joins_agent_views():
    from envs.graph import build_hetero_graph
    env = EdgeClusterEnv("edge-default")
    obs, _ = env.reset(seed=2)
    g = build_hetero_graph(env.batched_observations(), env.scenario)
    e = env.engine
    in_windows = len(set(e.window[e.window != e.empty].tolist()))
    assert g["pending"].num_nodes == in_windows
    assert g["cluster"].num_nodes == e.N
    assert g["node"].num_nodes == len(e.static.node_capacity)
    src, dst = g["pending", "visible_to", "cluster"].edge_index
    assert src.numel() == int((e.window != e.empty).sum())
    # every edge joins a task to a cluster whose window really holds it
    ids = g["pending"].task_id[src].numpy()
    for t, c in zip(ids, dst.numpy()):
        assert t in e.window[c]
