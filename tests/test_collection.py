"""Batched lockstep collection (issue 12): the same episodes as one-at-a-time acting for the same
seeds and weights, whatever the split over worker processes; the advantage estimators and the
value normalisation against hand computations; device selection."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agents.learned.acting import ActingOptions
from agents.learned.advantages import ValueNorm, build_samples, explained_variance, slot_returns
from agents.learned.collect import Episode, EpisodeJob, RewardSpec, collect_lockstep
from agents.learned.config import TrainConfig
from agents.learned.model import ModelConfig, TapFingerNet
from agents.learned.policy import Planner
from agents.learned.workers import Collector, split
from envs.episode import run_episode
from tests.helpers import small


def make_net(scenario, seed=0):
    torch.manual_seed(seed)
    return TapFingerNet(ModelConfig.for_scenario(scenario, hidden=16, layers=1)).eval()


class _SampledLone:
    """The one-at-a-time reference: the eager planner (`plan_round` with its own TorchScorer),
    sampling with the episode's generator, one round at a time through `run_episode`."""

    def __init__(self, planner: Planner, sample_seed: int, deterministic: bool = False):
        self.planner, self.rng = planner, np.random.default_rng(sample_seed)
        self.deterministic = deterministic
        self.records = []

    def reset(self, seed):
        self.planner.reset()

    def act(self, obs):
        actions, record = self.planner.act(obs, deterministic=self.deterministic, rng=self.rng)
        self.records.append(record)
        return actions


def _decisions(records):
    return [[(d.agent, [(s.place, s.node, tuple(s.alloc), s.task_id) for s in d.steps], d.lost_conflict)
             for d in r.decisions] for r in records]


def _logps(records):
    return np.array([s.logp_task + s.logp_rest for r in records for d in r.decisions for s in d.steps])


@pytest.mark.parametrize("multi, pointer, deterministic", [(False, True, False), (True, True, False),
                                                             (False, False, True)])
def test_lockstep_gives_the_episodes_of_one_at_a_time_acting(multi, pointer, deterministic):
    """Sampled play, multi-task sequences, and the no-pointer ablation's greedy play (whose task
    choice still draws)."""
    sc = small("edge-default", tasks=25)
    net, acting = make_net(sc), ActingOptions(multi_task=multi, pointer=pointer)
    jobs = [EpisodeJob(seed=3 + e, sample_seed=100 + e, deterministic=deterministic) for e in range(4)]
    batched = collect_lockstep(sc, net, acting, jobs)
    for job, ep in zip(jobs, batched):
        lone = _SampledLone(Planner(net, sc, acting), job.sample_seed, deterministic)
        res = run_episode(sc, lone, job.seed)
        assert ep.num_rounds == res.rounds and ep.avg_jct == res.avg_jct and ep.unfinished == res.unfinished
        assert _decisions(ep.rounds) == _decisions(lone.records)
        np.testing.assert_allclose(_logps(ep.rounds), _logps(lone.records), atol=1e-5)
    assert len({e.avg_jct for e in batched}) > 1  # the episodes differ: the comparison means something


def test_any_split_over_workers_gives_the_same_episodes():
    sc = small("synthetic-3", tasks=20)
    net, acting = make_net(sc), ActingOptions()
    jobs = [EpisodeJob(seed=10 + e // 2, sample_seed=50 + e) for e in range(5)]
    results = {}
    for workers in (1, 2, 3):
        c = Collector(sc, acting, workers, RewardSpec(0.05), torch.device("cpu"))
        try:
            results[workers] = c.run(net, jobs)
        finally:
            c.close()
    for w in (2, 3):
        for a, b in zip(results[1], results[w]):
            assert (a.seed, a.sample_seed, a.num_rounds, a.avg_jct) == (b.seed, b.sample_seed, b.num_rounds, b.avg_jct)
            assert _decisions(a.rounds) == _decisions(b.rounds)
            np.testing.assert_array_equal(a.round_reward, b.round_reward)
    # two sample seeds of one arrival seed: same arrivals, other choices
    assert results[1][0].seed == results[1][1].seed and _decisions(results[1][0].rounds) != _decisions(results[1][1].rounds)


def test_split_is_contiguous_and_even():
    assert split(list(range(7)), 3) == [[0, 1], [2, 3, 4], [5, 6]]
    assert split([1, 2], 5) == [[1], [2]]


def test_greedy_evaluation_is_reproducible_in_any_batch():
    sc = small("synthetic-3", tasks=20)
    net = make_net(sc)
    alone = [collect_lockstep(sc, net, ActingOptions(), [EpisodeJob(s, deterministic=True)])[0].avg_jct
             for s in (1, 2, 3)]
    together = [e.avg_jct for e in collect_lockstep(sc, net, ActingOptions(),
                                                    [EpisodeJob(s, deterministic=True) for s in (1, 2, 3)])]
    assert alone == together


# ------------------------------------------------------------------------------------ advantages
def _episode(seed, slot_rewards, decisions_at):
    """An episode of one round per slot, a decision of agent 0 in the rounds `decisions_at`."""
    from agents.learned.acting import AgentDecision, RoundRecord, Step

    n = len(slot_rewards)
    rounds = [RoundRecord({}) for _ in range(n)]
    step = Step({}, 0, 0, np.zeros(1, dtype=np.int64), 0, 1.0, -0.5, -0.25)
    for t in decisions_at:
        rounds[t].decisions.append(AgentDecision(0, [step], value=0.0))
    rr = np.asarray(slot_rewards, dtype=float)
    return Episode(seed, rounds, rr, np.ones(n, dtype=bool), 1.0, float(rr.sum()))


def test_input_driven_baseline_is_the_mean_return_of_the_other_rollouts_of_the_seed():
    g = 0.5
    a = _episode(7, [-4.0, -2.0, -2.0], [0, 2])
    b = _episode(7, [-2.0, -2.0], [0])
    c = _episode(7, [-1.0, -1.0, -1.0, -1.0], [1])
    samples = build_samples([a, b, c], g, 0.9, baseline="input")
    ra, rb, rc = slot_returns(a, g), slot_returns(b, g), slot_returns(c, g)
    assert ra[0] == -4 + g * (-2 + g * -2)
    by = {(s.episode, s.round): s for s in samples}
    assert by[(0, 0)].advantage == pytest.approx(ra[0] - (rb[0] + rc[0]) / 2)
    assert by[(0, 2)].advantage == pytest.approx(ra[2] - (0.0 + rc[2]) / 2)  # b had ended: its return is 0
    assert by[(2, 1)].advantage == pytest.approx(rc[1] - (ra[1] + rb[1]) / 2)
    assert by[(0, 0)].ret == pytest.approx(ra[0]) and by[(0, 0)].old_logp == pytest.approx(-0.75)
    with pytest.raises(ValueError, match="rollouts-per-seed"):
        build_samples([a, _episode(8, [-1.0], [0])], g, 0.9, baseline="input")


def test_value_norm_running_statistics_equal_those_of_all_data():
    rng = np.random.default_rng(0)
    parts = [rng.normal(30, 7, size=n) for n in (5, 40, 13)]
    vn = ValueNorm()
    for p in parts:
        vn.update(p)
    everything = np.concatenate(parts)
    assert vn.mean == pytest.approx(everything.mean()) and vn.var == pytest.approx(everything.var())
    x = np.array([10.0, 40.0])
    np.testing.assert_allclose(vn.denormalise(vn.normalise(torch.tensor(x)).numpy()), x)
    off = ValueNorm(enabled=False)
    off.update(everything)
    assert off.normalise(torch.tensor(x)).tolist() == x.tolist()


def test_explained_variance():
    r = np.array([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(r, r) == 1.0
    assert explained_variance(np.full(4, r.mean()), r) == pytest.approx(0.0)
    assert explained_variance(r[::-1], r) == pytest.approx(-3.0)  # worse than a constant: negative


# ---------------------------------------------------------------------------------------- devices
def test_worker_count_and_device_selection():
    cfg = TrainConfig("synthetic-3", "/tmp/unused", envs=8)
    assert dataclasses.replace(cfg, device="cuda").worker_count() == 1  # one process, large batches on the GPU
    assert dataclasses.replace(cfg, workers=3).worker_count() == 3
    assert dataclasses.replace(cfg, workers=30).worker_count() == 8  # never more processes than episodes
    sc = small("synthetic-3", tasks=5)
    net = make_net(sc)
    with pytest.raises(ValueError, match="network on cpu"):
        collect_lockstep(sc, net, ActingOptions(), [EpisodeJob(1)], device="meta")
