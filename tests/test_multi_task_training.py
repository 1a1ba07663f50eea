"""Training in multi-task mode (issue 13, item 3): collection records sequences of choices, PPO
scores a decision as the product of its steps' probabilities (each step under its own masks), so
the update starts at ratio 1; `--multi-task` reaches the checkpoint, `tapfinger` plays in the mode
it was trained in, and `--resume` may not change it."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json

import numpy as np
import pytest
import torch

from agents.learned.acting import ActingOptions
from agents.learned.advantages import ValueNorm, attach_values, build_samples
from agents.learned.checkpoint import CheckpointError, read_payload
from agents.learned.collect import EpisodeJob, collect_lockstep
from agents.learned.config import PPOConfig
from agents.learned.model import ModelConfig, TapFingerNet
from agents.learned.ppo import evaluate_samples, ppo_update
from tapfinger.sim.scenario import builtin_text, load_scenario
from tests.helpers import small

CPU = torch.device("cpu")
MULTI = ActingOptions(multi_task=True, max_sequence=3)
JOBS = [EpisodeJob(3, 11), EpisodeJob(4, 12)]


def fresh_net(sc) -> TapFingerNet:
    torch.manual_seed(0)
    return TapFingerNet(ModelConfig.for_scenario(sc, hidden=16, layers=1)).eval()


def collection(acting: ActingOptions):
    """Two sampled episodes of a small multi-node scenario and their PPO samples."""
    sc = small("edge-default", tasks=30)
    net = fresh_net(sc)
    episodes = collect_lockstep(sc, net, acting, JOBS)
    attach_values(net, episodes, ValueNorm(enabled=False), CPU)
    return net, episodes, build_samples(episodes, 0.95, 0.9)


@pytest.fixture(scope="module")
def multi():
    return collection(MULTI)


def test_multi_task_collection_records_sequences_each_step_under_its_own_masks(multi):
    _, _, samples = multi
    lengths = [len(s.steps) for s in samples]
    assert max(lengths) > 1 and max(lengths) <= MULTI.max_sequence
    for s in samples:
        for k, st in enumerate(s.steps[1:], start=1):
            # the tasks chosen earlier in the sequence are no longer choosable at step k
            for before in s.steps[:k]:
                assert before.place >= 0 and st.masks["task_mask"][before.place + 1] == 0
            assert st.masks["task_mask"][st.place + 1] == 1  # what was chosen was allowed
    _, _, single = collection(ActingOptions(multi_task=False, max_sequence=3))
    assert {len(s.steps) for s in single} == {1}  # the same jobs in single-task mode


def test_the_update_recomputes_the_collected_sequence_log_probabilities(multi):
    """ratio == 1 before any gradient step, with every path of the sum exercised: sequences of
    several starts, a sequence ended by "do nothing", and a first step that lost a conflict (its
    node and allocation left out in collection and update alike)."""
    net, episodes, samples = multi
    assert any(sum(st.place >= 0 for st in s.steps) > 1 for s in samples)
    assert any(len(s.steps) > 1 and s.steps[-1].place < 0 for s in samples)
    assert any(s.lost for s in samples)
    with torch.no_grad():
        logp, entropy, _ = evaluate_samples(net, samples, episodes, CPU)
    old = torch.tensor([s.old_logp for s in samples], dtype=logp.dtype)
    torch.testing.assert_close(logp, old, atol=1e-5, rtol=0)

    # the decision is the product of its steps: each step scored alone, with its own masks
    one_step = [dataclasses.replace(s, steps=[st], lost=s.lost and k == 0)
                for s in samples for k, st in enumerate(s.steps)]
    owner = torch.tensor([j for j, s in enumerate(samples) for _ in s.steps])
    with torch.no_grad():
        lp1, ent1, _ = evaluate_samples(net, one_step, episodes, CPU)
    torch.testing.assert_close(logp, torch.zeros_like(logp).index_add_(0, owner, lp1), atol=1e-5, rtol=0)
    for head, e in entropy.items():  # the entropy bonus of every step
        torch.testing.assert_close(e, torch.zeros_like(e).index_add_(0, owner, ent1[head]), atol=1e-5, rtol=0)

    # scoring the later steps with the first step's masks would not reproduce them
    stale = [dataclasses.replace(s, steps=[s.steps[0]] + [dataclasses.replace(st, masks=s.steps[0].masks)
                                                          for st in s.steps[1:]]) for s in samples]
    with torch.no_grad():
        lp_stale, _, _ = evaluate_samples(net, stale, episodes, CPU)
    assert (lp_stale - old).abs().max() > 1e-3


@pytest.mark.parametrize("pointer", [True, False])
def test_ppo_update_starts_at_ratio_one_and_then_moves(multi, pointer):
    """One minibatch, one epoch: its ratio is computed before the gradient step. The no-pointer
    ablation is scored as it was collected (uniform task choice), not with the pointer."""
    net, episodes, samples = multi if pointer else collection(dataclasses.replace(MULTI, pointer=False))
    net = copy.deepcopy(net)  # the module's collection keeps its own network
    old = torch.tensor([s.old_logp for s in samples])
    if not pointer:  # the pointer's scores are not what the ablation sampled from
        with torch.no_grad():
            with_pointer, _, _ = evaluate_samples(net, samples, episodes, CPU, pointer=True)
        assert (with_pointer - old.to(with_pointer.dtype)).abs().max() > 1e-3
    before = [p.detach().clone() for p in net.parameters()]
    cfg = PPOConfig(epochs=1, minibatch_rounds=10_000, target_kl=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    stats = ppo_update(net, opt, samples, episodes, cfg, np.random.default_rng(0), CPU, pointer=pointer)
    assert abs(stats["approx_kl"]) < 1e-8 and stats["clipfrac"] == 0.0
    assert np.isfinite(stats["policy_loss"]) and np.isfinite(stats["value_loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, net.parameters(), strict=True))


class FirstTaskScorer:
    """Starts the first allowed task on its first allowed node at the task's minimum."""

    def for_round(self, arrays):
        return self

    def score(self, agents, masks):
        from agents.learned.acting import Choices

        place = np.array([int(np.flatnonzero(tm[1:])[0]) for tm in masks["task_mask"]])
        node = np.array([int(np.flatnonzero(nm[p])[0]) for nm, p in zip(masks["node_mask"], place, strict=True)])
        alloc = np.stack([low[p] for low, p in zip(masks["alloc_low"], place, strict=True)])
        return Choices(place, node, alloc, np.ones(len(agents)))


def test_an_agent_whose_plan_became_unplayable_decides_in_that_round():
    """A planned step whose task is gone (another cluster started it) is dropped, and the agent
    decides afresh at once: a round without a start ends the slot, so waiting a round would cost
    it its turn in this slot."""
    from agents.learned.acting import RoundPlanner, Step
    from envs.observations import build_observations
    from tests.helpers import engine_with

    eng = engine_with("hetero-6", [(0, "IMG", [0]), (0, "IMG", [0])])
    obs = build_observations(eng)
    planner = RoundPlanner(eng.scenario, MULTI)
    planner.slot = int(obs["slot"][0, 0])
    gone = Step({}, 0, 0, np.zeros(obs["alloc_low"].shape[2], dtype=np.int64), task_id=10_000, prob=1.0)
    planner.queue[0] = [gone]
    actions, record = planner.plan_round(obs, FirstTaskScorer())
    assert [d.agent for d in record.decisions] == [0]
    assert actions.task[0] == 0 and record.decisions[0].steps[0].task_id == int(obs["window_id"][0, 0])


# --------------------------------------------------------------------------- through the CLI
TRAIN_FLAGS = ["--envs", "2", "--workers", "1", "--total-steps", "1", "--imitate", "min", "--imitation-episodes",
               "1", "--imitation-epochs", "1", "--eval-every", "1", "--eval-seeds", "1", "--hidden", "16",
               "--layers", "1", "--epochs", "1", "--quiet"]


def train_cli(argv: list[str]) -> tuple[int, str]:
    """`tapfinger train ARGV` through the CLI's entry; (exit code, what it printed)."""
    from tapfinger.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["train", *argv])
    return code, out.getvalue()


def printed_summary(out: str) -> dict:
    """The JSON summary `tapfinger train` prints after its log lines."""
    return json.loads(out[out.index("\n{") + 1:out.rindex("}") + 1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`tapfinger train --multi-task --max-sequence 3` on a 15-task edge-default: one PPO iteration."""
    d = tmp_path_factory.mktemp("multi_train")
    toml = d / "edge15.toml"
    toml.write_text(builtin_text("edge-default").replace("tasks = 300", "tasks = 15"))
    run = d / "run"
    base = ["--scenario", str(toml), "--run-dir", str(run), *TRAIN_FLAGS]
    code, out = train_cli([*base, "--multi-task", "--max-sequence", "3"])
    assert code == 0, out
    return base, run, load_scenario(str(toml)), printed_summary(out)


def test_train_multi_task_completes_with_finite_losses_and_stores_the_mode(trained):
    _, run, _, printed = trained
    last = printed["last"]
    assert last["iteration"] == 1
    assert all(np.isfinite(last[k]) for k in ("policy_loss", "value_loss", "entropy", "approx_kl"))
    assert last["steps_per_decision"] > 1  # sequences were collected and learned from
    payload = read_payload(run / "checkpoint.pt")
    assert payload["acting"] == dataclasses.asdict(MULTI)
    assert json.loads(payload["train_config"])["acting"] == dataclasses.asdict(MULTI)


def _decision_lengths(policy, sc, seed: int = 3) -> list[int]:
    from envs.observations import build_observations
    from tapfinger.sim.engine import Engine

    policy.reset(seed)
    eng = Engine(sc)
    eng.reset(seed)
    lengths = []
    while not eng.done:
        actions, record = policy.planner.act(build_observations(eng), deterministic=True, rng=policy.rng)
        lengths += [len(d.steps) for d in record.decisions]
        actions.play(eng)
    return lengths


def test_tapfinger_plays_in_the_mode_it_was_trained_in_and_the_variants_override_it(trained):
    from agents.registry import make_policy

    _, run, sc, _ = trained
    ckpt = str(run / "checkpoint.pt")
    played = make_policy("tapfinger", sc, checkpoint=ckpt)
    assert (played.planner.options.multi_task, played.planner.options.max_sequence) == (True, 3)
    assert max(_decision_lengths(played, sc)) > 1
    single = make_policy("tapfinger-single", sc, checkpoint=ckpt)
    assert not single.planner.options.multi_task and set(_decision_lengths(single, sc)) == {1}
    assert make_policy("tapfinger-multi", sc, checkpoint=ckpt).planner.options.multi_task


def test_resume_keeps_the_mode_and_refuses_to_change_it(trained, capsys):
    base, run, _, _ = trained
    code, _ = train_cli([*base, "--resume", "--max-sequence", "2"])
    err = capsys.readouterr().err
    assert code == 2 and "acting options" in err and "max-sequence 3 -> 2" in err
    # without acting flags the run's mode is kept: it goes on in multi-task mode
    code, out = train_cli([*base, "--resume", "--total-steps", "100"])
    assert code == 0, out
    payload = read_payload(run / "checkpoint.pt")
    assert payload["acting"] == dataclasses.asdict(MULTI) and int(payload["iteration"]) > 1


def test_resume_of_a_single_task_run_refuses_multi_task(tmp_path):
    from agents.learned.train import Trainer
    from tests.test_training_options import tiny

    sc = small("synthetic-3", tasks=8)
    cfg = tiny(tmp_path / "run", 0)
    Trainer(cfg, sc, progress=False).train(log=lambda *_: None)  # the warm start, saved
    with pytest.raises(CheckpointError, match="--multi-task"):
        Trainer(dataclasses.replace(cfg, acting=ActingOptions(multi_task=True)), sc, resume=True, progress=False)
