"""Training options of issue 12: --init-from, --critic-warmup, the separate critic and its
gradient accounting, the entropy schedule, --max-minutes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agents.learned.checkpoint import CheckpointError, save_checkpoint
from agents.learned.config import ModelOptions, PPOConfig, TrainConfig
from agents.learned.model import ModelConfig, TapFingerNet
from agents.learned.train import Trainer
from tests.helpers import small


def tiny(run_dir, total, **kw) -> TrainConfig:
    return TrainConfig(scenario="synthetic-3", run_dir=str(run_dir), envs=2, workers=1, total_steps=total,
                       model=ModelOptions(hidden=16, layers=1), imitate="min", imitation_episodes=1,
                       imitation_epochs=1, eval_every=0, ppo=PPOConfig(epochs=1, minibatch_rounds=16), **kw)


def _shared_checkpoint(path, sc):
    torch.manual_seed(3)
    net = TapFingerNet(ModelConfig.for_scenario(sc, hidden=16, layers=1))  # an old-style shared critic
    return save_checkpoint(path, net=net, scenario=sc, acting={}, step=0), net


def test_init_from_copies_the_policy_and_seeds_a_separate_critic_with_its_encoder(tmp_path):
    sc = small("synthetic-3", tasks=12)
    path, src = _shared_checkpoint(tmp_path / "start.pt", sc)
    t = Trainer(dataclasses.replace(tiny(tmp_path / "run", 0), init_from=str(path)), sc, progress=False)
    assert t.imitation_done and t.net.critic_encoder is not None
    for k, v in src.encoder.state_dict().items():
        assert torch.equal(t.net.encoder.state_dict()[k], v) and torch.equal(t.net.critic_encoder.state_dict()[k], v)
    assert torch.equal(t.net.none_head[0].weight, src.none_head[0].weight)
    with pytest.raises(CheckpointError, match="--hidden 16"):
        Trainer(dataclasses.replace(tiny(tmp_path / "other", 0), init_from=str(path), model=ModelOptions(hidden=32)),
                sc, progress=False)
    # a hinted run from an unhinted policy (or the reverse) would silently add or drop the hints
    hinted = dataclasses.replace(tiny(tmp_path / "hinted", 0), init_from=str(path),
                                 model=dataclasses.replace(tiny(tmp_path / "hinted", 0).model, greedy_hint=True))
    with pytest.raises(CheckpointError, match="trained without hints.*Fix: leave out --greedy-hint"):
        Trainer(hinted, sc, progress=False)


def test_critic_warmup_leaves_the_policy_untouched_and_then_it_moves(tmp_path):
    sc = small("synthetic-3", tasks=12)
    path, _ = _shared_checkpoint(tmp_path / "start.pt", sc)
    cfg = dataclasses.replace(tiny(tmp_path / "run", 1), init_from=str(path),
                              ppo=PPOConfig(epochs=1, minibatch_rounds=16, critic_warmup=1))
    t = Trainer(cfg, sc, progress=False)
    actor0 = [p.detach().clone() for p in t.net.parameter_groups()["actor"]]
    critic0 = [p.detach().clone() for p in t.net.parameter_groups()["critic"]]
    t.train(log=lambda *_: None)  # one iteration: the warm-up
    assert all(torch.equal(a, p) for a, p in zip(actor0, t.net.parameter_groups()["actor"]))
    assert not all(torch.equal(c, p) for c, p in zip(critic0, t.net.parameter_groups()["critic"]))
    assert t.history[0]["grad_norm_actor"] == 0.0 and t.history[0]["grad_norm_critic"] > 0
    more = Trainer(dataclasses.replace(cfg, total_steps=10_000, max_minutes=1e-6), sc, resume=True, progress=False)
    more.train(log=lambda *_: None)  # past the warm-up: the policy learns; the deadline stops it at once
    assert more.iteration == 2
    assert not all(torch.equal(a, p) for a, p in zip(actor0, more.net.parameter_groups()["actor"]))


def test_parameter_groups_split_actor_and_critic():
    sc = small("synthetic-3", tasks=5)
    sep = TapFingerNet(ModelConfig.for_scenario(sc, hidden=16, layers=1, separate_critic=True))
    g = sep.parameter_groups()
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(g["actor"]) | ids(g["critic"]) == ids(sep.parameters()) and not ids(g["actor"]) & ids(g["critic"])
    assert ids(sep.critic_encoder.parameters()) <= ids(g["critic"]) and ids(sep.encoder.parameters()) <= ids(g["actor"])


def test_entropy_coefficient_decays_linearly_and_does_not_depend_on_the_step_budget():
    a = TrainConfig("synthetic-3", "/x", ppo=PPOConfig(ent_coef=0.01, ent_coef_end=0.002, ent_decay_steps=1000))
    assert a.ent_coef_at(0) == 0.01 and a.ent_coef_at(500) == pytest.approx(0.006) and a.ent_coef_at(5000) == 0.002
    assert dataclasses.replace(a, total_steps=7).ent_coef_at(500) == a.ent_coef_at(500)  # resume-safe


def test_input_baseline_needs_rollouts_that_divide_envs():
    with pytest.raises(ValueError, match="--rollouts-per-seed"):
        TrainConfig("synthetic-3", "/x", envs=6, ppo=PPOConfig(baseline="input", rollouts_per_seed=4)).validate()
    with pytest.raises(ValueError, match="--rollouts-per-seed"):
        TrainConfig("synthetic-3", "/x", envs=4, ppo=PPOConfig(baseline="input", rollouts_per_seed=1)).validate()
    cfg = TrainConfig("synthetic-3", "/x", envs=8, ppo=PPOConfig(baseline="input", rollouts_per_seed=4)).validate()
    t = Trainer.__new__(Trainer)  # only _jobs' arithmetic
    t.cfg = cfg
    jobs = t._jobs(8, 100)
    assert [j.seed for j in jobs] == [100] * 4 + [101] * 4 and len({j.sample_seed for j in jobs}) == 8
    assert np.all(np.diff([j.sample_seed for j in jobs]) != 0)


def test_init_from_with_dagger_rounds_is_expert_iteration_the_learner_plays_every_labelled_state(tmp_path):
    sc = small("synthetic-3", tasks=12)
    path, _ = _shared_checkpoint(tmp_path / "start.pt", sc)
    cfg = dataclasses.replace(tiny(tmp_path / "run", 0), init_from=str(path), imitate="rollout", dagger_rounds=1,
                              imitation_episodes=2)
    t = Trainer(cfg, sc, progress=False)
    assert not t.imitation_done
    jobs_seen = []
    real_jobs = t._jobs

    def spy(*args, **kwargs):
        jobs = real_jobs(*args, **kwargs)
        jobs_seen.extend(jobs)
        return jobs

    t._jobs = spy
    lines = []
    t.train(log=lines.append)
    assert t.imitation_done and len(jobs_seen) == 2
    assert all(job.teacher == "rollout" and job.learner_acts for job in jobs_seen)
    assert any("DAgger round 1" in line for line in lines)
    plain = Trainer(dataclasses.replace(cfg, run_dir=str(tmp_path / "plain"), dagger_rounds=0), sc, progress=False)
    assert plain.imitation_done  # --init-from alone: the starting policy replaces the warm start


def test_rates_give_each_arrival_seed_its_load_and_episodes_play_at_it(tmp_path):
    from agents.learned.collect import EpisodeJob, play_episode
    from tapfinger.sim.workload import make_workload

    sc = small("synthetic-3", tasks=12)
    cfg = dataclasses.replace(tiny(tmp_path / "run", 0), rates=(1.0, 5.0), ppo=PPOConfig(rollouts_per_seed=2,
                                                                                         baseline="input"))
    t = Trainer(cfg, sc, progress=False)
    jobs = t._jobs(4, 100)
    assert [j.rate for j in jobs] == [1.0, 1.0, 5.0, 5.0] and jobs[0].seed == jobs[1].seed != jobs[2].seed
    fast = jobs[2].scenario_of(sc)
    assert fast.arrivals.rate == 5.0 and fast.arrivals.tasks == sc.arrivals.tasks
    ep = play_episode(sc, t.net, cfg.acting, jobs[2])
    expected_slots = make_workload(fast, jobs[2].seed).arrival_slot
    assert ep.num_rounds >= expected_slots.max()  # the episode lasted past its last (rate-5) arrival
    assert make_workload(sc, jobs[2].seed).arrival_slot.max() > expected_slots.max()  # rate 2 spreads them out
    with pytest.raises(ValueError, match="rates"):
        dataclasses.replace(cfg, rates=(0.0,)).validate()
    assert EpisodeJob(0).scenario_of(sc) is sc
