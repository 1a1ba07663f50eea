"""Conflict resolution (`agents.learned.conflicts`), checked against posteriors computed by hand.

The rule (DESIGN.md, "The learned scheduler"): for a task picked by several agents, the posterior
that agent i hosts it is p_i × softmax(fits)_i over the competitors, where p_i is agent i's
picking probability and fits_i how many times the task's minimum fits in its free resources.
The argmax wins (ties: the lowest agent index), the others do nothing this round.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents.learned.conflicts import fit_count, resolve


def posterior(probs: list[float], fits: list[float]) -> list[float]:
    """p_i * exp(f_i) / sum_j exp(f_j), written out independently of the module."""
    top = max(fits)
    z = sum(math.exp(f - top) for f in fits)
    return [p * math.exp(f - top) / z for p, f in zip(probs, fits)]


def keep(task_ids, probs, fits, bayes=True) -> list[bool]:
    out = resolve(np.array(task_ids), np.array(probs, dtype=np.float64), np.array(fits, dtype=np.float64), bayes=bayes)
    assert out.dtype == bool and out.shape == (len(task_ids),)
    return out.tolist()


def test_probability_outweighs_the_prior():
    # A: p 0.9, fits 2; B: p 0.1, fits 3. The prior alone prefers B, the posterior A.
    post = posterior([0.9, 0.1], [2, 3])
    assert post[0] > post[1]  # 0.242 vs 0.073
    assert math.exp(3) > math.exp(2)  # prior alone: B
    assert keep([4, 4], [0.9, 0.1], [2, 3]) == [True, False]  # a mutant dropping the probability picks B


def test_prior_outweighs_the_probability():
    # A: p 0.9, fits 1; B: p 0.3, fits 4. The probability alone prefers A, the posterior B.
    post = posterior([0.9, 0.3], [1, 4])
    assert post[1] > post[0]  # 0.286 vs 0.043
    assert keep([4, 4], [0.9, 0.3], [1, 4]) == [False, True]  # a mutant dropping the prior picks A
    assert keep([4, 4], [0.9, 0.3], [1, 4], bayes=False) == [True, False]


def test_prior_is_a_softmax_of_the_fit_counts_not_the_counts():
    # A: p 0.7, fits 1; B: p 0.3, fits 2. softmax: 0.7 e^1 < 0.3 e^2 -> B; linear counts: 0.7 > 0.6 -> A.
    post = posterior([0.7, 0.3], [1, 2])
    assert post[1] > post[0]
    assert 0.7 * 1 > 0.3 * 2
    assert keep([0, 0], [0.7, 0.3], [1, 2]) == [False, True]


def test_large_fit_counts_do_not_overflow():
    # exp(1000) overflows: the softmax must be computed relative to the largest count.
    assert keep([2, 2], [0.5, 0.5], [1000, 1001]) == [False, True]
    assert keep([2, 2], [0.9, 0.1], [1000, 1001]) == [True, False]  # 0.9 e^-1 = 0.33 > 0.1


@pytest.mark.parametrize("bayes", [True, False])
def test_equal_posteriors_go_to_the_lowest_agent_index(bayes):
    assert keep([5, 5], [0.5, 0.5], [3, 3], bayes=bayes) == [True, False]
    # agents 1 and 3 tie; agent 0 starts nothing and agent 2 another task: agent 1 wins, not index 0
    assert keep([-1, 5, 6, 5], [0.0, 0.4, 0.1, 0.4], [0, 2, 0, 2], bayes=bayes) == [False, True, True, False]


def test_three_way_conflict_follows_the_full_posterior():
    probs, fits = [0.6, 0.1, 0.3], [0, 3, 2]
    post = posterior(probs, fits)  # 0.6*1, 0.1*e^3 = 2.01, 0.3*e^2 = 2.22 (over the same normaliser)
    winner = max(range(3), key=lambda i: post[i])
    assert winner == 2
    assert max(range(3), key=lambda i: probs[i]) == 0 and max(range(3), key=lambda i: fits[i]) == 1
    assert keep([9, 9, 9], probs, fits) == [False, False, True]
    assert keep([9, 9, 9], probs, fits, bayes=False) == [True, False, False]


def test_two_conflicts_in_one_round_are_resolved_independently():
    # task 3: agents 0 and 1; task 8: agents 2 and 4; agent 3 alone on task 9; agent 5 idle.
    task_ids = [3, 3, 8, 9, 8, -1]
    probs = [0.2, 0.9, 0.5, 0.01, 0.5, 0.0]
    fits = [1, 1, 5, 0, 0, 7]
    post3 = posterior([0.2, 0.9], [1, 1])
    post8 = posterior([0.5, 0.5], [5, 0])
    assert post3[1] > post3[0] and post8[0] > post8[1]
    assert keep(task_ids, probs, fits) == [False, True, True, True, False, False]
    # by probability alone task 8 is a tie: the lower index (agent 2) keeps it
    assert keep(task_ids, probs, fits, bayes=False) == [False, True, True, True, False, False]
    # the agent with the highest posterior overall (agent 1 on task 3) does not take task 8 from agent 2
    assert keep(task_ids, [0.2, 0.9, 0.1, 0.01, 0.05, 0.0], fits, bayes=False) == [False, True, True, True, False, False]


def test_without_conflict_every_start_is_kept_whatever_its_score():
    assert keep([1, 2, -1, 0], [0.01, 0.0, 0.9, 1e-9], [0, 0, 9, 0]) == [True, True, False, True]
    assert keep([-1, -1], [0.5, 0.5], [1, 1]) == [False, False]


# ------------------------------------------------------------------------------------ fit_count


def test_fit_count_is_per_node_not_pooled():
    # node 0 fits the minimum once (cpu 3 // 2), node 1 not at all (no gpu); pooled free (6, 4)
    # would give min(3, 4) = 3.
    free = np.array([[3, 4], [3, 0]])
    assert fit_count(free, np.array([True, True]), np.array([2, 1])) == 1


def test_fit_count_takes_the_scarcest_resource_of_each_node():
    free = np.array([[16, 4, 64], [8, 8, 20]])
    # node 0: min(16//2, 4//1, 64//6) = 4; node 1: min(4, 8, 20//6 = 3) = 3
    assert fit_count(free, np.array([True, True]), np.array([2, 1, 6])) == 7


def test_fit_count_ignores_padding_and_resources_the_task_does_not_need():
    free = np.array([[0, 8], [5, 0], [40, 40]])
    valid = np.array([True, True, False])  # the third row is padding: never counted
    # gpu minimum 2, cpu minimum 0: node 0 fits 4 (no cpu needed), node 1 fits 0
    assert fit_count(free, valid, np.array([0, 2])) == 4
    assert fit_count(free, np.array([False, False, False]), np.array([1, 1])) == 0


def test_planner_resolves_a_real_conflict_by_the_prior_over_free_resources():
    """One task visible to hetero-6 clusters 1 (8 cpu, 8 gpu) and 4 (24, 24); both are idle, so
    the liveness rule makes each pick it with probability 1 whatever the network: the prior
    decides. IMG's minimum (2, 1) fits 4 times on cluster 1, 12 times on cluster 4: cluster 4
    wins (the engine's own rule would give it to the lower index, cluster 1)."""
    import torch

    from agents.learned.model import ModelConfig, TapFingerNet
    from agents.learned.acting import ActingOptions
    from agents.learned.policy import Planner
    from envs.observations import build_observations
    from tests.helpers import engine_with

    eng = engine_with("hetero-6", [(0, "IMG", [1, 4])])
    obs = build_observations(eng)
    assert fit_count(obs["node_free"][1], obs["node_id"][1] >= 0, np.array([2, 1])) == 4
    assert fit_count(obs["node_free"][4], obs["node_id"][4] >= 0, np.array([2, 1])) == 12
    torch.manual_seed(0)
    net = TapFingerNet(ModelConfig.for_scenario(eng.scenario, hidden=16))
    for bayes, winner in ((True, 4), (False, 1)):
        planner = Planner(net, eng.scenario, ActingOptions(bayes=bayes))
        actions, record = planner.act(build_observations(eng), deterministic=True)
        starters = [i for i in range(eng.N) if actions.task[i] >= 0]
        assert starters == [winner], (bayes, actions.task.tolist())
        lost = sorted(d.agent for d in record.decisions if d.lost_conflict)
        assert lost == [5 - winner]  # the other of clusters 1 and 4
        picked = {d.agent: d.steps[0] for d in record.decisions}
        assert picked[1].task_id == picked[4].task_id == 0 and picked[1].prob == picked[4].prob == 1.0


def test_the_bayes_rule_is_the_default():
    # DESIGN.md: conflicts are decided by the posterior unless the ablation asks otherwise, so a
    # caller that does not say `bayes=` gets the prior-weighted choice (B), not the score alone (A).
    winners = resolve(np.array([4, 4]), np.array([0.9, 0.3]), np.array([1.0, 4.0]))
    assert winners.tolist() == [False, True]
