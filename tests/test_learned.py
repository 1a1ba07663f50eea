"""The learned scheduler: masks, log-probabilities, conflicts, checkpoints and exact resume."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agents.learned.batch import collate, round_arrays
from agents.learned.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from agents.learned.advantages import ValueNorm, attach_values
from agents.learned.collect import EpisodeJob, play_episode
from agents.learned.conflicts import fit_count, resolve
from agents.learned.model import ModelConfig, TapFingerNet
from agents.learned.acting import ActingOptions
from agents.learned.policy import Planner
from agents.learned.config import ModelOptions, PPOConfig
from agents.learned.advantages import build_samples
from agents.learned.ppo import evaluate_samples
from agents.learned.train import TrainConfig, Trainer
from tests.helpers import small


def make_net(scenario, **kw):
    torch.manual_seed(0)
    return TapFingerNet(ModelConfig.for_scenario(scenario, hidden=32, **kw))


@pytest.mark.parametrize("name, multi", [("synthetic-3", False), ("edge-default", True), ("edge-default", False)])
def test_sampled_actions_respect_masks_over_an_episode(name, multi):
    from tapfinger.sim.engine import Engine
    from envs.observations import build_observations

    sc = small(name, tasks=40)
    planner = Planner(make_net(sc), sc, ActingOptions(multi_task=multi))
    eng = Engine(sc, strict=True)  # any infeasible action raises
    eng.reset(1)
    rng = np.random.default_rng(0)
    while not eng.done:
        a, _ = planner.act(build_observations(eng), rng=rng)
        eng.play_round(a.task, a.node, a.alloc)
    assert eng.finished_count == 40


def test_stored_log_probabilities_match_re_evaluation():
    sc = small("edge-default", tasks=30)
    net = make_net(sc)
    ep = play_episode(sc, net, ActingOptions(multi_task=True), EpisodeJob(3, 1))
    attach_values(net, [ep], ValueNorm(enabled=False), torch.device("cpu"))
    samples = build_samples([ep], 0.95, 0.9)
    assert samples
    with torch.no_grad():
        logp, entropy, values = evaluate_samples(net, samples, [ep], torch.device("cpu"))
    old = torch.tensor([s.old_logp for s in samples], dtype=logp.dtype)
    torch.testing.assert_close(logp, old, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(values, torch.tensor([s.old_value for s in samples], dtype=values.dtype),
                               atol=1e-5, rtol=1e-5)
    assert all((e >= 0).all() for e in entropy.values()) and set(entropy) == {"task", "node", "alloc"}


def test_conflict_winner_by_bayes_posterior_and_by_score():
    tasks = np.array([7, 7, -1])
    probs = np.array([0.6, 0.5, 0.0])
    fits = np.array([1.0, 6.0, 0.0])  # agent 1 has far more room for the task
    assert resolve(tasks, probs, fits, bayes=True).tolist() == [False, True, False]
    assert resolve(tasks, probs, fits, bayes=False).tolist() == [True, False, False]


def test_fit_count_counts_minimum_per_node():
    free = np.array([[16, 4], [8, 8], [0, 0]])
    assert fit_count(free, np.array([True, True, False]), np.array([2, 1])) == 4 + 4


def test_loser_allocation_log_probability_left_out():
    from agents.learned.policy import Step
    from agents.learned.ppo import decision_logp

    step = Step({}, 0, 0, np.zeros(2, dtype=np.int64), 5, 0.5, logp_task=-1.0, logp_rest=-2.0)
    assert decision_logp([step], lost=False) == -3.0
    assert decision_logp([step], lost=True) == -1.0


def two_distinct_rounds(sc):
    """Observations of two rounds of one episode (min heuristic) with different, non-zero numbers
    of pending and running tasks, so that every offset of the second round is non-trivial."""
    from agents.registry import make_policy
    from envs.observations import build_observations
    from tapfinger.sim.engine import Engine

    eng = Engine(sc)
    eng.reset(0)
    policy = make_policy("min", sc)
    policy.reset(0)
    picked = []
    while not eng.done and len(picked) < 2:
        obs = build_observations(eng)
        g = round_arrays(obs, sc)
        P, M = g["pending_x"].shape[0], g["running_x"].shape[0]
        if P and M and all(P != q and M != m for _, q, m in picked):
            picked.append((obs, P, M))
        a = policy.act(obs)
        eng.play_round(a.task, a.node, a.alloc)
    assert len(picked) == 2
    return [o for o, _, _ in picked]


def test_graph_batch_offsets_rows():
    sc = small("edge-default", tasks=40)
    obs = two_distinct_rounds(sc)
    r = [round_arrays(o, sc) for o in obs]
    b = collate(r)
    N = sc.num_clusters
    NT = sum(len(c.nodes) for c in sc.clusters)
    P1, M1 = r[0]["pending_x"].shape[0], r[0]["running_x"].shape[0]
    assert b.num_rounds == 2
    assert torch.equal(b.x["pending"], torch.from_numpy(np.concatenate([r[0]["pending_x"], r[1]["pending_x"]])))
    assert torch.equal(b.x["running"], torch.from_numpy(np.concatenate([r[0]["running_x"], r[1]["running_x"]])))
    # window rows: round 1 as it is; round 2's pending rows come after round 1's P1 rows
    w1, w2 = r[0]["window_row"], r[1]["window_row"]
    assert b.window_row[:N].tolist() == w1.tolist()
    assert b.window_row[N:].tolist() == np.where(w2 >= 0, w2 + P1, -1).tolist()
    # ... so that the row of every window place holds that place's task
    ids = np.concatenate([r[0]["pending_task_id"], r[1]["pending_task_id"]])
    for k in range(2):
        rows = b.window_row[k * N:(k + 1) * N].numpy()
        assert (np.where(rows >= 0, ids[np.maximum(rows, 0)], -1) == obs[k]["window_id"]).all()
    # node rows: global node id, plus NT for round 2
    nid = [o["node_id"] for o in obs]
    assert b.node_row.tolist() == np.concatenate([nid[0], np.where(nid[1] >= 0, nid[1] + NT, -1)]).tolist()
    # edges of round 2: (pending + P1, cluster + N), (running + M1, node + NT), (node + NT, cluster + N)
    off = {("pending", "visible_to", "cluster"): ("visible_edge", P1, N),
           ("running", "placed_on", "node"): ("placed_edge", M1, NT)}
    for key, (name, src_off, dst_off) in off.items():
        e1, e2 = r[0][name], r[1][name]
        assert e1.shape[1] and e2.shape[1]
        want = np.concatenate([e1, e2 + np.array([[src_off], [dst_off]])], axis=1)
        assert b.edges[key].tolist() == want.tolist(), key
        rev = (key[2], "rev_" + key[1], key[0])
        assert b.edges[rev].tolist() == want[::-1].tolist(), rev
    member = b.edges[("node", "in", "cluster")].numpy()
    assert member.tolist() == [list(range(2 * NT)),
                               np.concatenate([r[0]["node_cluster"], r[1]["node_cluster"] + N]).tolist()]
    assert b.agent_row.tolist() == list(range(2 * N))
    assert b.round_of_agent.tolist() == b.cluster_round.tolist() == [0] * N + [1] * N
    for k in ("task_mask", "node_mask", "alloc_low", "alloc_high"):
        assert b.masks[k].long().tolist() == np.concatenate([o[k] for o in obs]).tolist(), k


# ---------------------------------------------------------------------------------------------- training


def tiny_config(run_dir, total, **kw) -> TrainConfig:
    return TrainConfig(scenario="synthetic-3", run_dir=str(run_dir), envs=1, total_steps=total,
                       model=ModelOptions(hidden=16, layers=1), imitate="min", imitation_episodes=1,
                       imitation_epochs=1, eval_every=0,
                       ppo=PPOConfig(epochs=1, minibatch_rounds=16), **kw)


def test_resume_gives_identical_parameters(tmp_path):
    sc = small("synthetic-3", tasks=12)
    straight = Trainer(tiny_config(tmp_path / "a", 90), sc, progress=False)
    straight.train(log=lambda *_: None)
    half = Trainer(tiny_config(tmp_path / "b", 45), sc, progress=False)
    half.train(log=lambda *_: None)
    resumed = Trainer(tiny_config(tmp_path / "b", 90), sc, resume=True, progress=False)
    assert resumed.iteration == half.iteration > 0
    resumed.train(log=lambda *_: None)
    assert resumed.iteration == straight.iteration
    for (k, v1), (_, v2) in zip(straight.net.state_dict().items(), resumed.net.state_dict().items()):
        assert torch.equal(v1, v2), k


def test_training_writes_tensorboard_names_and_refuses_to_overwrite(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sc = small("synthetic-3", tasks=12)
    cfg = dataclasses.replace(tiny_config(tmp_path, 30), eval_every=1, eval_seeds=1, eval_heuristic="min")
    Trainer(cfg, sc, progress=False).train(log=lambda *_: None)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for name in ["charts/episodic_return", "charts/SPS", "losses/policy_loss", "losses/value_loss",
                 "losses/entropy", "losses/approx_kl", "losses/clipfrac", "eval/avg_jct", "eval/avg_jct_min"]:
        assert name in tags
    assert "hyperparameters/text_summary" in acc.Tags()["tensors"]
    with pytest.raises(RuntimeError, match="pass --resume"):
        Trainer(cfg, sc, progress=False)


def test_checkpoint_refusals(tmp_path):
    sc = small("synthetic-3", tasks=12)
    net = make_net(sc)
    path = save_checkpoint(tmp_path / "c.pt", net=net, scenario=sc, acting={}, step=3)
    assert load_checkpoint(path, sc).step == 3
    from tapfinger.sim.scenario import load_scenario

    with pytest.raises(CheckpointError, match="trained on scenario 'synthetic-3'.*hetero-6"):
        load_checkpoint(path, load_scenario("hetero-6"))
    with pytest.raises(CheckpointError, match="another model configuration"):
        load_checkpoint(path, sc, expect_config=ModelConfig.for_scenario(sc, hidden=64))
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted, truncated"):
        load_checkpoint(tmp_path / "trunc.pt", sc)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt", sc)
    torch.save({"format": "other"}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a tapfinger-checkpoint-1"):
        load_checkpoint(tmp_path / "foreign.pt", sc)


def test_checkpoint_model_fields_of_other_versions(tmp_path):
    sc = small("synthetic-3", tasks=12)
    path = save_checkpoint(tmp_path / "c.pt", net=make_net(sc), scenario=sc, acting={}, step=3)
    payload = torch.load(path, weights_only=True)
    payload["model_config"]["extra"] = {}  # what the shipped checkpoints carry: an empty, dropped field
    torch.save(payload, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt", sc).net.cfg == make_net(sc).cfg
    payload["model_config"]["extra"] = {"gating": True}  # something this version cannot honour
    torch.save(payload, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="model options this version does not know"):
        load_checkpoint(tmp_path / "new.pt", sc)


def test_resume_with_other_model_flags_is_refused(tmp_path):
    sc = small("synthetic-3", tasks=12)
    Trainer(tiny_config(tmp_path, 20), sc, progress=False).train(log=lambda *_: None)
    other = dataclasses.replace(tiny_config(tmp_path, 40), model=ModelOptions(hidden=32, layers=1))
    with pytest.raises(CheckpointError, match="another model configuration"):
        Trainer(other, sc, resume=True, progress=False)


def test_cuda_flag_without_cuda_is_a_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    sc = small("synthetic-3", tasks=12)
    with pytest.raises(RuntimeError, match="no CUDA device"):
        Trainer(dataclasses.replace(tiny_config(tmp_path, 10), device="cuda"), sc, progress=False)


def truncated(tasks=40, max_slots=6):
    """synthetic-3 cut short: some tasks are still waiting or running when the episode ends."""
    return small("synthetic-3", tasks=tasks, max_slots=max_slots)


def test_collected_episode_measures_as_the_evaluation_does():
    from agents.registry import make_policy
    from envs.episode import run_episode

    sc = truncated()
    ep = play_episode(sc, make_net(sc), ActingOptions(), EpisodeJob(2, 0, teacher="min"))
    res = run_episode(sc, make_policy("min", sc, seed=2), 2)  # the teacher acted: the same episode
    assert res.truncated and res.unfinished > 0
    assert ep.unfinished == res.unfinished
    assert np.isfinite(ep.avg_jct) and ep.avg_jct == res.avg_jct  # finished tasks only, never a -1
    assert ep.num_rounds == res.rounds and len(ep.slot_ended) == len(ep.round_reward) == res.rounds
    assert all(r is not None for r in ep.rounds) and sum(len(r.decisions) for r in ep.rounds) > 0


def test_training_reports_unfinished_tasks(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = dataclasses.replace(tiny_config(tmp_path, 20), eval_every=1, eval_seeds=1, eval_heuristic="min")
    trainer = Trainer(cfg, truncated(), progress=False)
    history = trainer.train(log=lambda *_: None)["history"]
    assert history and all(h["unfinished_tasks"] > 0 and h["eval_unfinished_tasks"] > 0 for h in history)
    assert all(np.isfinite(h["train_avg_jct"]) and np.isfinite(h["eval_avg_jct"]) for h in history)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert {"charts/unfinished_tasks", "eval/unfinished_tasks"} <= set(acc.Tags()["scalars"])
