"""The learned policy's decline action (issue 14), continued: training with declines from the
command line, `--init-from` a policy without the head, shipped checkpoints unchanged, and exported
declining programs (`tests/test_learned_decline.py` has masks, acting and the updates)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.learned.checkpoint import load_checkpoint, read_payload, save_checkpoint
from agents.learned.config import ModelOptions, TrainConfig
from agents.learned.model import DECLINE_INIT, ModelConfig, TapFingerNet
from agents.learned.policy import LearnedPolicy
from tapfinger.sim.scenario import builtin_text, load_scenario
from tests.test_learned_decline import REPO, decline_scenario
from tests.helpers import play_in_lockstep

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- training
def decline_toml(tmp_path: Path, allow: bool = True) -> Path:
    text = builtin_text("synthetic-3").replace("tasks = 192", "tasks = 15")
    if allow:
        text = text.replace("switch_weight = 0.5", "switch_weight = 0.5\nallow_decline = true")
    text += '\n[deadlines]\nrule = "elasticflow"\n'
    path = tmp_path / ("decline.toml" if allow else "no-decline.toml")
    path.write_text(text)
    return path


def train_cli(argv: list[str]) -> tuple[int, str]:
    from tapfinger.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", *argv])
    return code, out.getvalue() + err.getvalue()


TRAIN_FLAGS = ["--envs", "2", "--workers", "1", "--total-steps", "1", "--imitate", "min", "--imitation-episodes",
               "1", "--imitation-epochs", "1", "--eval-every", "0", "--hidden", "16", "--layers", "1", "--epochs",
               "1", "--miss-penalty", "2", "--quiet"]


def test_train_with_declines_completes_and_stores_the_option(tmp_path):
    toml = decline_toml(tmp_path)
    run = tmp_path / "run"
    code, out = train_cli(["--scenario", str(toml), "--run-dir", str(run), *TRAIN_FLAGS])
    assert code == 0, out
    last = json.loads(out[out.index("\n{") + 1:out.rindex("}") + 1])["last"]
    assert all(np.isfinite(last[k]) for k in ("policy_loss", "value_loss", "entropy", "approx_kl"))
    payload = read_payload(run / "checkpoint.pt")
    assert payload["model_config"]["decline"] is True  # --decline auto on a scenario that allows it
    assert json.loads(payload["train_config"])["decline"] == "auto"
    assert any(k.startswith("decline_head.") for k in payload["model_state"])
    policy = LearnedPolicy(load_scenario(str(toml)), checkpoint=str(run / "checkpoint.pt"))
    assert policy.planner.decline

    # --decline on refuses a scenario without allow_decline; off trains without the head
    no = decline_toml(tmp_path, allow=False)
    code, out = train_cli(["--scenario", str(no), "--run-dir", str(tmp_path / "no"), *TRAIN_FLAGS,
                           "--decline", "on"])
    assert code == 2 and "--decline on needs a scenario that allows declining" in out
    cfg = TrainConfig(scenario=str(toml), run_dir="unused", decline="off")
    assert cfg.model_config(load_scenario(str(toml))).decline is False
    assert TrainConfig(scenario="x", run_dir="unused").model_config(load_scenario(str(no))).decline is False
    with pytest.raises(ValueError, match="--decline must be auto, on or off"):
        TrainConfig(scenario="x", run_dir="unused", decline="yes").validate()


def test_init_from_a_policy_without_declines_keeps_its_weights_and_adds_the_head(tmp_path):
    from agents.learned.train import Trainer

    sc = decline_scenario(12)
    without = dataclasses.replace(sc, allow_decline=False)
    torch.manual_seed(3)
    src = TapFingerNet(ModelConfig.for_scenario(without, hidden=16, layers=1))
    cfg = TrainConfig(scenario="synthetic-3", run_dir="", envs=2, workers=1, total_steps=0,
                      model=ModelOptions(hidden=16, layers=1), imitate="min", eval_every=0)
    # from the scenario before it allowed declining, and from the same scenario trained with --decline off
    for k, (ckpt_scenario, run_scenario) in enumerate([(without, sc), (sc, sc)]):
        path = save_checkpoint(tmp_path / f"start{k}.pt", net=src, scenario=ckpt_scenario, acting={}, step=0)
        if ckpt_scenario is sc:  # a checkpoint of the decline scenario with the head switched off
            assert not load_checkpoint(path, sc).net.cfg.decline
        t = Trainer(dataclasses.replace(cfg, run_dir=str(tmp_path / f"run{k}"), init_from=str(path)), run_scenario,
                    progress=False)
        assert t.net.cfg.decline and t.imitation_done
        own = t.net.state_dict()
        for name, v in src.state_dict().items():
            if not name.startswith("critic."):  # the critic's input width differs (critic_progress)
                assert torch.equal(own[name], v), name
        assert torch.equal(t.net.decline_head[-1].bias, torch.full((1,), DECLINE_INIT))


# --------------------------------------------------------------------------- older checkpoints
# (hetero-6 and trace-3 were retrained after the option existed: edge-default is the other old one)
@pytest.mark.parametrize("name", ["synthetic-3", "edge-default"])
def test_a_shipped_checkpoint_loads_without_the_head_and_plays_its_recorded_episodes(name):
    from envs.episode import run_episode

    payload = read_payload(REPO / "checkpoints" / f"{name}.pt")
    assert "decline" not in payload["model_config"]  # written before the option existed
    sc = load_scenario(name)
    policy = LearnedPolicy(sc, checkpoint=str(REPO / "checkpoints" / f"{name}.pt"))
    assert policy.net.cfg.decline is False and policy.net.decline_head is None and not policy.planner.decline
    assert not any(k.startswith("decline_head") for k in policy.net.state_dict())
    ref = json.loads((REPO / "checkpoints" / f"{name}.json").read_text())
    per_seed = ref["policies"]["tapfinger"]["avg_jct"]["per_seed"]
    for k, seed in enumerate(ref["seeds"][:2]):  # the shipped evaluation's episodes, seed by seed
        assert run_episode(sc, policy, seed).avg_jct == pytest.approx(per_seed[k], abs=1e-12)


# --------------------------------------------------------------------------- export
# The decline head's bias of the exported network: with it, greedy play of the two episodes below
# declines about 10 of their 80 tasks (measured: 33 at -2.0, 3 at -2.8, none from -3.0).
EXPORT_DECLINE_BIAS = -2.5


def exportable_net(sc) -> TapFingerNet:
    """hidden 32, every parameter away from its initial value (as tests/test_export.py), and a
    decline bias at which greedy play declines now and then."""
    torch.manual_seed(1)
    net = TapFingerNet(ModelConfig.for_scenario(sc, hidden=32, decline=True))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        net.decline_head[-1].bias.fill_(EXPORT_DECLINE_BIAS)
    return net.eval()


@pytest.fixture(scope="module")
def exported(one_torch_thread, tmp_path_factory) -> dict:
    from agents.learned.export import export_files

    d = tmp_path_factory.mktemp("declining")
    sc = decline_scenario(40)
    ckpt = save_checkpoint(d / "c.pt", net=exportable_net(sc), scenario=sc, acting={}, step=3)
    results = export_files(ckpt, {fmt: d / f"policy.{fmt}" for fmt in ("onnx", "pt2")}, scenario=sc)
    assert all(r.verified_rounds > 5 for r in results)
    return {"scenario": sc, "checkpoint": ckpt, **{r.metadata["program"]["format"]: r.path for r in results},
            "metadata": results[0].metadata}


def test_exported_declining_policies_choose_the_eager_actions(exported):
    from agents.exported import ExportedPolicy

    sc = exported["scenario"]
    eager = LearnedPolicy(sc, checkpoint=str(exported["checkpoint"]))
    others = [ExportedPolicy(sc, path=exported[fmt], kind=fmt) for fmt in ("onnx", "pt2")]
    assert all(p.planner.decline for p in others)
    declined = sum(play_in_lockstep(sc, eager, others, seed).declined_count for seed in (5, 6))
    assert 0 < declined < sc.arrivals.tasks  # greedy play declined some of the 2 x 40 tasks, not most


def test_the_metadata_says_it_declines_and_a_scenario_without_declines_refuses_it(exported):
    from agents.export_format import declines
    from agents.exported import ExportedPolicy, ExportedPolicyError, read_metadata

    meta = exported["metadata"]
    assert meta["decline"] is True and meta["model_config"]["decline"] is True and declines(meta)
    assert meta["feature_layout"]["outputs"][-1] == "decline"
    assert read_metadata(exported["onnx"])["decline"] is True
    plain = dataclasses.replace(exported["scenario"], allow_decline=False)
    for fmt in ("onnx", "pt2"):
        with pytest.raises(ExportedPolicyError, match="does not allow declining"):
            ExportedPolicy(plain, path=exported[fmt], kind=fmt)


def test_the_declining_program_module_equals_the_eager_model_on_random_graphs():
    from agents.learned.export_program import PolicyModule, feeds_to_tensors, random_feeds
    from agents.learned.export_verify import compare_outputs, eager_outputs_for_feeds

    net = exportable_net(decline_scenario())
    with torch.no_grad():  # on these random graphs: 4 of 8 rows decline, 2 start (measured)
        net.decline_head[-1].bias.fill_(1.0)
        net.none_head[-1].bias.add_(-3.0)
    module = PolicyModule(net).eval()
    declined = started = 0
    for k, s in enumerate([dict(N=6, nodes_per_cluster=[1, 1, 1, 1, 1, 1], P=20, M=6, W=10, S=5),
                           dict(N=3, nodes_per_cluster=[1, 1, 1], P=5, M=0, W=14, S=3)]):
        feeds = random_feeds(net.cfg, **s, seed=k)
        assert feeds["task_mask"].shape[1] == 2 * s["W"] + 1
        with torch.no_grad():
            got = [t.numpy() for t in module(*feeds_to_tensors(feeds))]
        assert len(got) == 6
        assert compare_outputs(got, eager_outputs_for_feeds(net, feeds), atol=1e-6) is None, s
        declined += int((got[5] >= 0).sum())
        started += int((got[0] >= 0).sum())
        assert ((got[5] >= 0) <= (got[0] < 0)).all()  # a decline starts nothing
    assert declined and started
