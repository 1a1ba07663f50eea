"""Invariants under random and adversarial actions (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from envs.actions import random_feasible
from tapfinger.sim.engine import FINISHED, Engine
from tests.helpers import scenario_params, small

SCENARIOS = ["synthetic-3", "hetero-6", "edge-default", "trace-3"]


def adversarial(eng: Engine, rng: np.random.Generator):
    """Arbitrary integers, most of them out of range or over capacity."""
    N, R, M = eng.N, eng.R, eng.M
    task = rng.integers(-3, eng.W + 3, size=N)
    node = rng.integers(-2, 4, size=N)
    alloc = rng.integers(-2, 40, size=(N, R))
    realloc = rng.integers(-2, 40, size=(N, M, R)) if rng.random() < 0.5 else None
    return task, node, alloc, realloc


def feasible(eng: Engine, obs_builder, rng: np.random.Generator, preempt: bool):
    obs = obs_builder(eng)
    N, R = eng.N, eng.R
    act = random_feasible(obs, rng)
    task, node, alloc = act.task, act.node, act.alloc
    realloc = None
    if preempt and eng.scenario.allow_preemption and rng.random() < 0.3:
        # pause or halve a random running task: always within capacity
        realloc = np.full((N, eng.M, R), -1, dtype=np.int64)
        for i in range(N):
            live = np.flatnonzero(obs["running_id"][i] >= 0)
            if live.size:
                k = int(rng.choice(live))
                realloc[i, k] = 0 if rng.random() < 0.5 else np.maximum(
                    obs["running_alloc"][i, k] // 2, eng.static.type_min[obs["running_type"][i, k]])
    return task, node, alloc, realloc


# One pytest case per scenario (so a scenario whose shared data is absent skips alone), three
# hypothesis examples each: the same twelve examples in all as one test over sampled scenarios.
@pytest.mark.parametrize("name", scenario_params(SCENARIOS))
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), p_bad=st.floats(0.0, 0.7), preempt=st.booleans())
def test_invariants_under_random_and_adversarial_actions(name, seed, p_bad, preempt):
    from envs.observations import build_observations

    eng = Engine(small(name, tasks=25))
    finishes = np.zeros(25, dtype=np.int64)
    original_finish = eng._finish

    def counting_finish(t):
        finishes[t] += 1
        original_finish(t)

    eng._finish = counting_finish
    eng.reset(seed)
    rng = np.random.default_rng(seed)
    cap = eng.static.node_capacity
    for _ in range(20_000):
        if eng.done:
            break
        if rng.random() < p_bad:
            eng.play_round(*adversarial(eng, rng))
        else:
            eng.play_round(*feasible(eng, build_observations, rng, preempt))
        assert (eng.node_free >= 0).all(), "a resource went negative"
        assert (eng.node_free <= cap).all(), "free exceeds capacity"
        # what running tasks hold equals what nodes miss
        used = np.zeros_like(cap)
        live = eng.running[eng.running != eng.empty]
        np.add.at(used, eng.node[live], eng.alloc[live])
        np.testing.assert_array_equal(used, cap - eng.node_free)
    assert eng.done and not eng.truncated, "the episode did not end"
    assert (finishes == 1).all(), "every task that arrives finishes exactly once"
    assert (eng.status[:25] == FINISHED).all()
    rec = eng.task_records()
    assert (rec["jct"] >= 1).all()
    assert (rec["finish"] >= rec["start"]).all() and (rec["start"] >= rec["arrival"]).all()
