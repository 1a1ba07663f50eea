"""The learned scheduler on unreliable nodes (issue 15): node health and speed in the graph as an
option of the network (`ModelConfig.node_faults`, envs/graph.py's `NODE_FAULT_COLUMNS`), older
checkpoints unchanged, exported programs with the option, and training over a distribution of
fault rates (`--fault-scales`, `collect.fault_scaled`)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.learned.checkpoint import read_payload, save_checkpoint
from agents.learned.collect import EpisodeJob, fault_scaled
from agents.learned.config import ModelOptions, PPOConfig, TrainConfig
from agents.learned.model import ModelConfig, TapFingerNet
from agents.learned.policy import LearnedPolicy, Planner
from envs.actions import RoundActions
from envs.episode import run_episode
from envs.graph import NODE_FAULT_COLUMNS, feature_dims, feature_layout, graph_arrays
from envs.observations import build_observations
from tapfinger.sim.engine import Engine
from tapfinger.sim.faults import FaultTimeline
from tapfinger.sim.scenario import Faults, builtin_text, load_scenario
from tapfinger.sim.tables import static_tables
from tests.helpers import play_in_lockstep

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py
REPO = Path(__file__).resolve().parent.parent
R = 3  # edge-default's resources: cpu, gpu, mem


def short(name: str, tasks: int = 25):
    sc = load_scenario(name)
    return dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=tasks))


def faulty_engine():
    """edge-default (factory: nodes 0-1, campus 2-4, retail 5-6, metro 7-8) whose first slot ends
    with node 0 failed, node 3 at half speed, node 5 away and node 6 at a quarter of its speed."""
    events = ((1.0, 0, "fail", 0.0), (1.0, 3, "slow", 0.5), (1.0, 5, "leave", 0.0), (1.0, 6, "slow", 0.25))
    sc = dataclasses.replace(short("edge-default"), faults=Faults(events=events))
    eng = Engine(sc, strict=True)
    eng.reset(0)
    assert RoundActions.nothing(eng.N, eng.R).play(eng)  # slot 0 ends: its events apply
    return eng


def play_net(sc, net: TapFingerNet, seed: int = 3, on_round=None):
    planner = Planner(net, sc)

    class Greedy:
        name = "tapfinger"

        def reset(self, seed: int) -> None:
            planner.reset()

        def act(self, obs):
            return planner.act(obs, deterministic=True)[0]

    return run_episode(sc, Greedy(), seed, on_round=on_round)


# --------------------------------------------------------------------------- the feature columns
def test_health_and_speed_columns_on_a_hand_made_faulty_engine():
    eng = faulty_engine()
    obs = build_observations(eng)
    sc = eng.scenario
    g = graph_arrays(obs, sc, node_faults=True)
    layout = feature_layout(sc, node_faults=True)
    assert layout["node"][-2:] == NODE_FAULT_COLUMNS["node"] and layout["cluster"][-2:] == NODE_FAULT_COLUMNS["cluster"]
    assert g["node_x"].shape == (9, 2 * R + 2) and g["cluster_x"].shape == (4, 2 * R + 5)
    health, speed = g["node_x"][:, 2 * R], g["node_x"][:, 2 * R + 1]  # node rows in global node order
    assert health.tolist() == [0, 1, 1, 1, 1, 0, 1, 1, 1]
    assert speed.tolist() == pytest.approx([1, 1, 1, 0.5, 1, 1, 0.25, 1, 1])
    up_share, mean_speed = g["cluster_x"][:, 2 * R + 3], g["cluster_x"][:, 2 * R + 4]
    assert up_share.tolist() == pytest.approx([0.5, 1.0, 0.5, 1.0])  # factory, campus, retail, metro
    assert mean_speed.tolist() == pytest.approx([1.0, 2.5 / 3, 0.25, 1.0])  # of the nodes that are up
    # a failed or departed node shows no capacity either: the columns say why
    assert (g["node_x"][[0, 5], :R] == 0).all() and (g["node_x"][[1, 6], :R] > 0).all()
    # without the option: the older layout, which is the option's layout minus its last columns
    plain = graph_arrays(obs, sc)
    assert plain["node_x"].shape == (9, 2 * R) and plain["cluster_x"].shape == (4, 2 * R + 3)
    assert np.array_equal(plain["node_x"], g["node_x"][:, :2 * R])
    assert np.array_equal(plain["cluster_x"], g["cluster_x"][:, :2 * R + 3])
    for kind, cols in feature_layout(sc).items():
        assert layout[kind][:len(cols)] == cols
    assert feature_dims(3, R, node_faults=True) == {**feature_dims(3, R), "node": 2 * R + 2, "cluster": 2 * R + 5}


def test_without_faults_the_columns_are_ones():
    sc = short("edge-default")
    eng = Engine(sc, strict=True)
    eng.reset(1)
    g = graph_arrays(build_observations(eng), sc, node_faults=True)
    assert (g["node_x"][:, 2 * R:] == 1).all() and (g["cluster_x"][:, 2 * R + 3:] == 1).all()


# --------------------------------------------------------------------------- older checkpoints
def test_the_shipped_edge_default_checkpoint_loads_unchanged_and_plays_its_recorded_episode():
    path = REPO / "checkpoints" / "edge-default.pt"
    assert "node_faults" not in read_payload(path)["model_config"]  # written before the option existed
    sc = load_scenario("edge-default")
    policy = LearnedPolicy(sc, checkpoint=str(path))
    assert policy.net.cfg.node_faults is False and not policy.planner.node_faults
    assert policy.net.encoder.inp["node"].in_features == 2 * R
    ref = json.loads((REPO / "checkpoints" / "edge-default.json").read_text())
    seed = ref["seeds"][0]
    assert run_episode(sc, policy, seed).avg_jct == pytest.approx(
        ref["policies"]["tapfinger"]["avg_jct"]["per_seed"][0], abs=1e-12)
    # on edge-faulty (the same fingerprint: faults are left out of it) it runs, blind to the faults
    faulty = short("edge-faulty", tasks=30)
    result = run_episode(faulty, LearnedPolicy(faulty, checkpoint=str(path)), seed)
    assert not result.truncated and result.invalid_actions == 0 and result.unfinished == 0


# --------------------------------------------------------------------------- a network with the option
def fault_net(sc, seed: int = 0, hidden: int = 16) -> TapFingerNet:
    torch.manual_seed(seed)
    return TapFingerNet(ModelConfig.for_scenario(sc, hidden=hidden, layers=1, node_faults=True)).eval()


def test_a_node_faults_network_plays_edge_faulty_and_edge_default():
    faulty = short("edge-faulty", tasks=40)
    net = fault_net(faulty)
    assert net.encoder.inp["node"].in_features == 2 * R + 2
    seen = []

    def on_round(info):
        seen.append(graph_arrays(info.obs, faulty, node_faults=True)["node_x"][:, 2 * R].min())

    result = play_net(faulty, net, on_round=on_round)
    assert not result.truncated and result.invalid_actions == 0 and result.unfinished == 0
    assert min(seen) == 0  # the episode met a node that was down, and the network was shown it
    result = play_net(short("edge-default", tasks=40), net)  # the same network where nothing fails
    assert not result.truncated and result.invalid_actions == 0 and result.unfinished == 0


def test_the_health_columns_change_the_network_s_scores():
    eng = faulty_engine()
    obs = build_observations(eng)
    from agents.learned.acting import round_arrays
    from agents.learned.batch import collate

    net = fault_net(eng.scenario, seed=2)
    seen = collate([round_arrays(obs, eng.scenario, node_faults=True)])
    healthy = round_arrays(obs, eng.scenario, node_faults=True)
    healthy["node_x"][:, 2 * R:] = 1.0
    healthy["cluster_x"][:, 2 * R + 3:] = 1.0
    with torch.no_grad():
        a, b = net.encode(seen)["agent"], net.encode(collate([healthy]))["agent"]
    assert not torch.allclose(a, b)


def test_init_from_a_checkpoint_without_the_columns_starts_as_its_policy(tmp_path):
    from agents.learned.acting import round_arrays
    from agents.learned.batch import collate
    from agents.learned.checkpoint import load_checkpoint
    from agents.learned.train import Trainer

    path = REPO / "checkpoints" / "edge-default.pt"
    faulty = short("edge-faulty")
    cfg = TrainConfig(scenario="edge-faulty", run_dir=str(tmp_path / "run"), init_from=str(path), workers=1)
    t = Trainer(cfg, faulty, progress=False)
    assert t.model_cfg.node_faults  # auto: the scenario has faults
    old = load_checkpoint(path, faulty).net.eval()
    assert old.critic_encoder is not None  # both encoders are widened
    for enc in ("encoder", "critic_encoder"):
        for kind in ("node", "cluster"):
            w = getattr(t.net, enc).inp[kind].weight
            assert torch.equal(w[:, :-2], getattr(old, enc).inp[kind].weight) and (w[:, -2:] == 0).all()
    obs = build_observations(faulty_engine())
    with torch.no_grad():
        new = t.net.eval().encode(collate([round_arrays(obs, faulty, node_faults=True)]))["agent"]
        ref = old.encode(collate([round_arrays(obs, faulty)]))["agent"]
    assert torch.allclose(new, ref, atol=1e-6)  # blind to the faults until PPO learns to use them


# --------------------------------------------------------------------------- export
@pytest.fixture(scope="module")
def exported(one_torch_thread, tmp_path_factory) -> dict:
    from agents.learned.export import export_files

    d = tmp_path_factory.mktemp("faulty")
    sc = short("edge-faulty", tasks=30)
    torch.manual_seed(1)
    net = TapFingerNet(ModelConfig.for_scenario(sc, hidden=32, node_faults=True))
    with torch.no_grad():  # every parameter away from its initial value (as tests/test_export.py)
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    ckpt = save_checkpoint(d / "c.pt", net=net.eval(), scenario=sc, acting={}, step=1)
    results = export_files(ckpt, {fmt: d / f"policy.{fmt}" for fmt in ("onnx", "pt2")}, scenario=sc)
    assert all(r.verified_rounds > 5 for r in results)
    return {"scenario": sc, "checkpoint": ckpt, **{r.metadata["program"]["format"]: r.path for r in results},
            "metadata": results[0].metadata}


def test_exported_node_faults_policies_choose_the_eager_actions(exported):
    from agents.export_format import sees_node_faults
    from agents.exported import ExportedPolicy, read_metadata

    meta = exported["metadata"]
    assert meta["node_faults"] is True and sees_node_faults(meta) and sees_node_faults(read_metadata(exported["onnx"]))
    assert meta["feature_layout"]["columns"]["node"][-2:] == NODE_FAULT_COLUMNS["node"]
    sc = exported["scenario"]
    eager = LearnedPolicy(sc, checkpoint=str(exported["checkpoint"]))
    others = [ExportedPolicy(sc, path=exported[fmt], kind=fmt) for fmt in ("onnx", "pt2")]
    assert all(p.planner.node_faults for p in others)
    eng = play_in_lockstep(sc, eager, others, seed=4)
    assert eng.fault_log  # the episode met faults
    # and on a scenario without faults (the same fingerprint), the program runs with columns of 1s
    plain = short("edge-default", tasks=20)
    result = run_episode(plain, ExportedPolicy(plain, path=exported["onnx"], kind="onnx"), 2)
    assert not result.truncated and result.unfinished == 0


def test_a_file_whose_columns_are_not_its_network_s_is_refused(exported):
    from agents.export_format import check_metadata
    from agents.exported import ExportedPolicyError

    meta = json.loads(json.dumps(exported["metadata"]))
    meta["model_config"]["node_faults"] = False  # claims the older layout, holds the new one
    with pytest.raises(ExportedPolicyError, match="other graph features"):
        check_metadata(meta, Path("x.onnx"), exported["scenario"], "onnx")


# --------------------------------------------------------------------------- fault scales
def small_faulty(tasks: int = 12):
    return short("edge-faulty", tasks=tasks)


def test_fault_scales_give_each_arrival_seed_its_fault_rate(tmp_path):
    from agents.learned.train import Trainer

    sc = small_faulty()
    cfg = TrainConfig(scenario="edge-faulty", run_dir=str(tmp_path / "run"), workers=1, envs=6, fault_scales=(0, 1, 2),
                      rates=(2.0, 3.0), model=ModelOptions(hidden=16, layers=1), ppo=PPOConfig(rollouts_per_seed=1))
    t = Trainer(cfg, sc, progress=False)
    jobs = t._jobs(6, 100)
    assert [j.fault_scale for j in jobs] == [0.0, 1.0, 2.0, 0.0, 1.0, 2.0]
    assert [j.rate for j in jobs] == [2.0, 3.0] * 3
    f = sc.faults
    none, same, double = (j.scenario_of(sc) for j in jobs[:3])
    assert not none.faults.active and none.faults.checkpoint_seconds == f.checkpoint_seconds
    assert same.faults == f and same.arrivals.rate == 3.0
    assert (double.faults.mtbf_seconds, double.faults.slowdown_mtbf_seconds, double.faults.leave_mtbf_seconds) == (
        f.mtbf_seconds / 2, f.slowdown_mtbf_seconds / 2, f.leave_mtbf_seconds / 2)
    assert (double.faults.repair_seconds, double.faults.slowdown_seconds, double.faults.absence_seconds) == (
        f.repair_seconds, f.slowdown_seconds, f.absence_seconds)
    assert EpisodeJob(0).scenario_of(sc) is sc and fault_scaled(sc, 1.0) is sc
    # more faults at scale 2, none at 0 (the same seed's fault stream)
    st = static_tables(sc)
    counts = [len(FaultTimeline(s, 7, len(st.node_cluster), st.node_cluster).events_until(7200.0))
              for s in (same, double)]
    assert counts[1] > counts[0] > 0
    eng = Engine(none)
    eng.reset(7)
    assert eng.fault_timeline is None
    from agents.learned.collect import play_episode

    for job in jobs[:3]:  # the jobs' episodes play at their scenarios
        ep = play_episode(sc, t.net, cfg.acting, job)
        assert ep.unfinished == 0 and np.isfinite(ep.avg_jct)


def test_fault_scales_are_refused_where_they_cannot_apply(tmp_path):
    from agents.learned.train import Trainer

    with pytest.raises(ValueError, match="--fault-scales must be fault scales of 0 or more"):
        TrainConfig(scenario="x", run_dir="unused", fault_scales=(1.0, -1.0)).validate()
    with pytest.raises(ValueError, match="--node-faults must be auto, on or off"):
        TrainConfig(scenario="x", run_dir="unused", node_faults="yes").validate()
    plain = short("edge-default")
    with pytest.raises(ValueError, match="--fault-scales needs a scenario with faults"):
        Trainer(TrainConfig(scenario="edge-default", run_dir=str(tmp_path / "a"), fault_scales=(0, 1)), plain,
                progress=False)
    with pytest.raises(ValueError, match="needs a scenario with faults"):
        EpisodeJob(0, fault_scale=2.0).scenario_of(plain)
    with pytest.raises(ValueError, match="0 or more"):
        fault_scaled(small_faulty(), -0.5)
    replayed = dataclasses.replace(plain, faults=Faults(events=((10.0, 0, "fail", 0.0),)))
    assert not fault_scaled(replayed, 0).faults.active
    with pytest.raises(ValueError, match="no rate to scale"):
        fault_scaled(replayed, 2.0)
    # --node-faults: auto follows the scenario, on and off are what they say
    cfg = TrainConfig(scenario="x", run_dir="unused")
    assert cfg.model_config(small_faulty()).node_faults and not cfg.model_config(plain).node_faults
    assert dataclasses.replace(cfg, node_faults="on").model_config(plain).node_faults
    assert not dataclasses.replace(cfg, node_faults="off").model_config(small_faulty()).node_faults


def test_a_resume_keeps_the_fault_scales(tmp_path):
    from agents.learned.checkpoint import CheckpointError
    from agents.learned.resume import MAY_CHANGE_ON_RESUME, check_resumable

    assert "fault_scales" not in MAY_CHANGE_ON_RESUME and "node_faults" not in MAY_CHANGE_ON_RESUME  # as --rates
    cfg = TrainConfig(scenario="edge-faulty", run_dir="r", fault_scales=(0.0, 1.0))
    payload = {"acting": cfg.acting_dict(), "train_config": json.dumps(dataclasses.asdict(cfg))}
    check_resumable(Path("c.pt"), payload, cfg)
    with pytest.raises(CheckpointError, match="--fault-scales"):
        check_resumable(Path("c.pt"), payload, dataclasses.replace(cfg, fault_scales=(1.0, 2.0)))


# --------------------------------------------------------------------------- the command line
def test_train_on_edge_faulty_with_fault_scales_completes_and_stores_the_option(tmp_path):
    from tapfinger.cli.main import main

    toml = tmp_path / "edge-faulty.toml"  # edge-faulty with 15 tasks an episode
    toml.write_text(builtin_text("edge-faulty").replace("tasks = 300", "tasks = 15"))
    assert load_scenario(str(toml)).faults == load_scenario("edge-faulty").faults
    run = tmp_path / "run"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["train", "--scenario", str(toml), "--run-dir", str(run), "--fault-scales", "0", "1", "2",
                     "--envs", "3", "--workers", "1", "--total-steps", "1", "--imitate", "min",
                     "--imitation-episodes", "1", "--imitation-epochs", "1", "--eval-every", "0", "--hidden", "16",
                     "--layers", "1", "--epochs", "1", "--quiet"])
    text = out.getvalue() + err.getvalue()
    assert code == 0, text
    last = json.loads(text[text.index("\n{") + 1:text.rindex("}") + 1])["last"]
    assert all(np.isfinite(last[k]) for k in ("policy_loss", "value_loss", "entropy"))
    payload = read_payload(run / "checkpoint.pt")
    assert payload["model_config"]["node_faults"] is True  # --node-faults auto on a scenario with faults
    stored = json.loads(payload["train_config"])
    assert stored["fault_scales"] == [0.0, 1.0, 2.0] and stored["node_faults"] == "auto"
    policy = LearnedPolicy(load_scenario(str(toml)), checkpoint=str(run / "checkpoint.pt"))
    assert policy.planner.node_faults and policy.net.encoder.inp["node"].in_features == 2 * R + 2
