"""Exported policies (`tapfinger export`): same greedy actions as the eager model over whole
episodes, dynamic sizes, metadata checks, clear refusals, and no torch_geometric at run time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.exported import ExportedPolicy, ExportedPolicyError
from agents.learned.checkpoint import load_checkpoint, save_checkpoint
from agents.learned.checkpoint import scenario_fingerprint as checkpoint_fingerprint
from agents.learned.export import export_files
from agents.learned.export_program import PolicyModule, feeds_to_tensors, random_feeds
from agents.learned.export_verify import compare_outputs, eager_outputs_for_feeds, greedy_mismatch
from agents.learned.model import ModelConfig, TapFingerNet
from agents.learned.policy import LearnedPolicy
from agents.registry import make_policy
from tapfinger.cli.main import main
from tapfinger.sim.scenario import load_scenario
from tests.helpers import play_in_lockstep, small

REPO = Path(__file__).resolve().parent.parent
SCENARIOS = {"synthetic-3": 40, "edge-default": 30}  # name -> tasks per (shortened) episode


# Added to the "do nothing" head's output: this random edge-default network would otherwise pass
# after the one start the liveness rule asks of an idle cluster, and never plan a multi-task
# sequence of several tasks (test_multi_task_sequences_match_the_planner needs some).
NONE_BIAS = {"edge-default": -3.5}


def trained_like_net(scenario, seed: int = 0, none_bias: float = 0.0) -> TapFingerNet:
    """A hidden=32 network whose every parameter (biases included) is away from its initial value:
    PyG initialises GAT biases at zero, which would hide a wrong handling of empty edge types."""
    torch.manual_seed(seed)
    net = TapFingerNet(ModelConfig.for_scenario(scenario, hidden=32))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        net.none_head[-1].bias.add_(none_bias)
    return net.eval()


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def exported(one_torch_thread, tmp_path_factory) -> dict[str, dict]:
    """Per scenario: a checkpoint and its onnx and pt2 exports (each verified against the eager model)."""
    out = {}
    for name, tasks in SCENARIOS.items():
        d = tmp_path_factory.mktemp(name)
        sc = small(name, tasks=tasks)
        net = trained_like_net(sc, none_bias=NONE_BIAS.get(name, 0.0))
        ckpt = save_checkpoint(d / "checkpoint.pt", net=net, scenario=sc, acting={"multi_task": False}, step=7)
        res = export_files(ckpt, {fmt: d / f"policy.{fmt}" for fmt in ("onnx", "pt2")}, scenario=sc)
        assert all(r.verified_rounds > 5 for r in res)
        files = {r.metadata["program"]["format"]: r.path for r in res}
        out[name] = {"scenario": sc, "checkpoint": ckpt, **files}
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_exported_policies_choose_the_eager_greedy_actions(exported, name):
    e = exported[name]
    sc = e["scenario"]
    eager = LearnedPolicy(sc, checkpoint=str(e["checkpoint"]))
    onnx_policy = make_policy(f"onnx:{e['onnx']}", sc)
    pt2_policy = make_policy(f"pt2:{e['pt2']}", sc)
    for seed in (1, 2):
        assert play_in_lockstep(sc, eager, [onnx_policy, pt2_policy], seed).rounds_total > 20


def test_multi_task_sequences_match_the_planner(exported):
    # The program does not depend on the acting options: the same file serves a multi-task run.
    e = exported["edge-default"]
    sc = e["scenario"]
    eager = LearnedPolicy(sc, checkpoint=str(e["checkpoint"]), multi_task=True, max_sequence=3)
    onnx_policy = ExportedPolicy(sc, path=e["onnx"], kind="onnx", multi_task=True, max_sequence=3)
    queued = []
    act = onnx_policy.act
    onnx_policy.act = lambda obs: (act(obs), queued.append(any(onnx_policy.queue)))[0]
    play_in_lockstep(sc, eager, [onnx_policy], seed=3)
    assert sum(queued) >= 3  # sequences longer than one choice were planned and played


def test_plain_module_equals_the_eager_model_on_random_graphs():
    sc = small("edge-default")
    net = trained_like_net(sc, seed=1)
    module = PolicyModule(net).eval()
    sizes = [dict(N=4, nodes_per_cluster=[2, 3, 2, 2], P=12, M=6, W=10, S=3),
             dict(N=2, nodes_per_cluster=[1, 3], P=3, M=0, W=10, S=1),  # no running task: no placed edges
             dict(N=6, nodes_per_cluster=[1, 1, 2, 1, 1, 4], P=1, M=9, W=4, S=6)]
    for k, s in enumerate(sizes):
        feeds = random_feeds(net.cfg, **s, seed=k)
        with torch.no_grad():
            got = [t.numpy() for t in module(*feeds_to_tensors(feeds))]
        want = eager_outputs_for_feeds(net, feeds)
        assert compare_outputs(got, want, atol=1e-6) is None, s


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_exported_program_runs_on_graphs_of_other_sizes(exported, fmt):
    """A synthetic-3 program (3 clusters of one node) on 7 clusters with up to 3 nodes, a longer
    window, more tasks, and no running task at all."""
    from agents.exported import open_runner

    e = exported["synthetic-3"]
    net = load_checkpoint(e["checkpoint"], e["scenario"]).net.eval()
    runner = open_runner(e[fmt], fmt, e["scenario"])
    for k, s in enumerate([dict(N=7, nodes_per_cluster=[1, 2, 3, 1, 1, 2, 1], P=40, M=11, W=14, S=5),
                           dict(N=5, nodes_per_cluster=[1, 1, 1, 2, 1], P=6, M=0, W=10, S=1)]):
        feeds = random_feeds(net.cfg, **s, seed=10 + k)
        assert compare_outputs(runner.run(feeds), eager_outputs_for_feeds(net, feeds)) is None, s


def test_metadata_is_stored_with_the_file(exported):
    import onnx

    e = exported["synthetic-3"]
    props = {p.key: p.value for p in onnx.load(str(e["onnx"])).metadata_props}
    meta = json.loads(props["tapfinger"])
    assert meta["scenario"] == "synthetic-3"
    assert meta["scenario_fingerprint"] == checkpoint_fingerprint(e["scenario"])
    assert meta["acting"]["multi_task"] is False and meta["model_config"]["hidden"] == 32
    assert meta["feature_layout"]["columns"]["pending"][:2] == ["type=IMG", "type=LM"]
    assert meta["tapfinger_version"] and meta["checkpoint"]["step"] == 7
    pt2 = ExportedPolicy(e["scenario"], path=e["pt2"], kind="pt2").metadata
    assert pt2["scenario_fingerprint"] == meta["scenario_fingerprint"] and pt2["program"]["format"] == "pt2"


def test_fingerprint_without_torch_equals_the_checkpoint_one():
    """The exported-policy runtime (no torch) computes the same fingerprint as the one stored in
    each shipped checkpoint by the training code."""
    from agents.learned.checkpoint import read_payload

    shipped = sorted((REPO / "checkpoints").glob("*.pt"))
    names = [p.stem for p in shipped]
    code = (
        "import json, sys\n"
        "from agents.exported import scenario_fingerprint\n"
        "from tapfinger.sim.scenario import ScenarioError, load_scenario\n"
        "out = {}\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        out[name] = scenario_fingerprint(load_scenario(name))\n"
        "    except ScenarioError:\n"
        "        pass  # its shared data is missing here\n"
        "out['<torch>'] = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_geometric'))\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(names)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got.pop("<torch>") == []
    assert {"synthetic-3", "hetero-6", "edge-default"} <= set(got)
    stored = {p.stem: read_payload(p)["scenario_fingerprint"] for p in shipped}
    assert got == {name: stored[name] for name in got}
    # scenarios are told apart, except an `-uncertain` or faulty variant and its base: the fingerprint
    # leaves out the [uncertainty] and [faults] tables as it leaves out the arrivals (what a policy
    # depends on structurally)
    variants = {"edge-faulty": "edge-default"}
    base = {name: variants.get(name, name.removesuffix("-uncertain")) for name in stored}
    for a in stored:
        for b in stored:
            assert (stored[a] == stored[b]) == (base[a] == base[b]), (a, b)


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_broken_or_foreign_files_are_refused_clearly(exported, tmp_path, fmt):
    e = exported["synthetic-3"]
    sc = e["scenario"]
    good = Path(e[fmt]).read_bytes()
    cases = {"missing": (None, "does not exist"),
             "corrupted": (np.random.default_rng(0).bytes(4096), "corrupted, truncated"),
             "truncated": (good[: len(good) // 2], "corrupted, truncated")}
    for case, (content, words) in cases.items():
        path = tmp_path / f"{case}.{fmt}"
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(ExportedPolicyError, match=words) as err:
            ExportedPolicy(sc, path=path, kind=fmt)
        assert "Fix:" in str(err.value) and isinstance(err.value, ValueError)
    for other in ("synthetic-6", "edge-default"):  # same feature sizes but 6 clusters; other resources
        with pytest.raises(ExportedPolicyError, match=f"exported for scenario 'synthetic-3'.*'{other}'.*Fix:"):
            make_policy(f"{fmt}:{e[fmt]}", load_scenario(other))


def test_onnx_file_without_our_metadata_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8  # what any onnxruntime reads
    onnx.save(model, str(path))
    with pytest.raises(ExportedPolicyError, match="not a TapFinger exported policy.*Fix: .*tapfinger export"):
        ExportedPolicy(small("synthetic-3"), path=path, kind="onnx")


def test_cli_export_and_evaluate(exported, tmp_path, capsys):
    e = exported["synthetic-3"]
    out = tmp_path / "cli.pt2"
    assert main(["export", "--checkpoint", str(e["checkpoint"]), "--out", str(out), "--no-verify"]) == 0
    assert "wrote" in capsys.readouterr().out and out.is_file()
    assert main(["export", "--show", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["scenario"] == "synthetic-3"
    assert main(["evaluate", "--scenario", "synthetic-3", "--policies", f"onnx:{e['onnx']},fifo", "--seeds", "1",
                 "--workers", "1", "--no-plots", "--quiet", "--out", str(tmp_path / "eval")]) == 0
    assert f"onnx:{e['onnx']}" in json.loads((tmp_path / "eval" / "results.json").read_text())["policies"]
    capsys.readouterr()
    assert main(["evaluate", "--scenario", "synthetic-3", "--policies", f"onnx:{tmp_path / 'nope.onnx'}",
                 "--seeds", "1", "--workers", "1", "--no-plots", "--quiet", "--out", str(tmp_path / "e2")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_onnx_policy_runs_without_torch_geometric_or_torch(exported):
    path = exported["synthetic-3"]["onnx"]
    code = (
        "import sys\n"
        "from agents.registry import make_policy\n"
        "from envs.episode import run_episode\n"
        "from tests.helpers import small\n"
        "sc = small('synthetic-3', tasks=15)\n"
        f"result = run_episode(sc, make_policy('onnx:{path}', sc), seed=0)\n"
        "assert (result.records['jct'] >= 1).all()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_geometric')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_greedy_check_accepts_the_program_and_flags_a_worse_choice(exported):
    from agents.exported import MASK_KEYS, decision_feeds, graph_feeds, open_runner
    from agents.learned.batch import round_arrays
    from agents.learned.export_verify import sample_rounds

    e = exported["edge-default"]
    sc = e["scenario"]
    net = load_checkpoint(e["checkpoint"], sc).net.eval()
    runner = open_runner(e["onnx"], "onnx", sc)
    checked = 0
    for obs in sample_rounds(sc, net, {}, seed=5, max_rounds=15):
        agents = [i for i in range(sc.num_clusters) if obs["task_mask"][i, 1:].sum() >= 2]
        if not agents:
            continue
        masks = [{k: obs[k][i] for k in MASK_KEYS} for i in agents]
        got = runner.run({**graph_feeds(obs, sc), **decision_feeds(agents, masks)})
        arrays = round_arrays(obs, sc)
        assert greedy_mismatch(net, arrays, agents, masks, got) is None
        worse = [g.copy() for g in got]
        logits = got[3][0]
        allowed = np.flatnonzero(logits > -1e8)
        worse[0][0] = int(allowed[np.argmin(logits[allowed])]) - 1  # the least likely allowed choice
        assert "task of agent" in greedy_mismatch(net, arrays, agents, masks, worse)
        checked += 1
    assert checked >= 3


def test_pointer_ablation_is_not_exported(tmp_path):
    from agents.learned.export import ExportError, export_checkpoint

    sc = small("synthetic-3")
    ckpt = save_checkpoint(tmp_path / "c.pt", net=trained_like_net(sc), scenario=sc, acting={"pointer": False}, step=0)
    with pytest.raises(ExportError, match="pointer.*Fix: evaluate it as the policy `tapfinger`"):
        export_checkpoint(ckpt, tmp_path / "p.onnx", "onnx", scenario=sc)
    assert not (tmp_path / "p.onnx").exists()
