"""Issue 11, files from elsewhere: an exported .pt2 never runs code from the file, checkpoints and
exported programs with non-finite weights are refused, and damaged, mismatched or misplaced files
get a complete message that says what is wrong and how to fix it. The .pt2 files are made from a
tiny `torch.export` program, not a TapFinger network (tests/test_export.py exports real ones)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.export_format import FORMAT as EXPORT_FORMAT
from agents.export_format import PT2_EXTRA_FILE, ExportedPolicyError, check_metadata, expected_layout
from agents.learned.checkpoint import FORMAT, CheckpointError, load_checkpoint, read_payload, save_checkpoint
from agents.learned.model import ModelConfig, TapFingerNet
from tapfinger.cli.main import main
from tapfinger.sim.scenario import fingerprint_parts, load_scenario, scenario_fingerprint

REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ crafted .pt2 files
class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x, y):
        return self.lin(x).relu() + y


def _marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('code from the file ran')"


class Planted:
    """Unpickling it runs `exec` on code that writes the marker file."""

    def __init__(self, marker: Path):
        self.code = _marker_code(marker)

    def __reduce__(self):
        return exec, (self.code,)


def policy_metadata(sc) -> dict:
    """Metadata that passes `check_metadata` for `sc`: the file gets as far as being loaded."""
    return {"format": EXPORT_FORMAT, "scenario": sc.name, "scenario_fingerprint": scenario_fingerprint(sc),
            "feature_layout": expected_layout(sc), "acting": {}}


def tiny_program() -> torch.export.ExportedProgram:
    n = torch.export.Dim("n", min=2)  # a symbolic size: expressions and a shape guard in the file
    return torch.export.export(Tiny(), (torch.zeros(4, 3), torch.zeros(4, 2)), dynamic_shapes={"x": {0: n}, "y": {0: n}})


@pytest.fixture(scope="module")
def tiny_pt2() -> bytes:
    """A genuine torch.export.save archive carrying the metadata of a synthetic-3 policy."""
    buf = io.BytesIO()
    torch.export.save(tiny_program(), buf,
                      extra_files={PT2_EXTRA_FILE: json.dumps(policy_metadata(load_scenario("synthetic-3")))})
    return buf.getvalue()


def rewrite(data: bytes, edits: dict, duplicate: str | None = None) -> bytes:
    """The archive with members replaced or added ({relative name: bytes, or a function editing the
    member's JSON in place}), and optionally a second copy of one member."""
    src = zipfile.ZipFile(io.BytesIO(data))
    root = src.namelist()[0].split("/")[0]
    members = {n.split("/", 1)[1]: src.read(n) for n in src.namelist()}
    for rel, edit in edits.items():
        if callable(edit):
            tree = json.loads(members[rel])
            edit(tree)
            edit = json.dumps(tree).encode()
        members[rel] = edit
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for rel in [*members, *([duplicate] if duplicate else [])]:
            z.writestr(f"{root}/{rel}", members[rel])
    return out.getvalue()


def pickled(obj, protocol: int = 2) -> bytes:
    import pickle

    buf = io.BytesIO()
    torch.save(obj, buf) if protocol == 2 else pickle.dump(obj, buf, protocol=protocol)
    return buf.getvalue()


def _set_exprs(node, text):
    for k, v in (node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()):
        if k == "expr_str":
            node[k] = text
        else:
            _set_exprs(v, text)


MODEL, WEIGHTS, CONSTANTS = ("models/model.json", "data/weights/model_weights_config.json",
                             "data/constants/model_constants_config.json")
OPAQUE = {"c": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}
# Each: how the file is crafted (from the genuine archive and the marker path), and what the
# refusal names. Each would run the marker's code (or load a foreign library) if torch opened it.
CRAFTED = {
    "sample inputs pickle": (lambda d, m: rewrite(d, {"data/sample_inputs/model.pt": pickled(Planted(m))}),
                             "names the global"),
    "pickled weight": (lambda d, m: rewrite(d, {WEIGHTS: lambda c: c["config"]["lin.bias"].update(use_pickle=True),
                                                "data/weights/weight_1": pickled(Planted(m))}),
                       "stores 'lin.bias' as a pickle"),
    "opaque constant": (lambda d, m: rewrite(d, {CONSTANTS: lambda c: c["config"].update(OPAQUE),
                                                 "data/constants/opaque_obj_0": pickled(Planted(m), 4)}),
                        "unexpected member 'data/constants/opaque_obj_0'"),
    "sympify expression": (lambda d, m: rewrite(d, {MODEL: lambda mo: _set_exprs(
        mo, f"Symbol.__xnew__.__globals__['__builtins__']['exec']('{_marker_code(m)}')")}), "unexpected expression"),
    "huge power": (lambda d, m: rewrite(d, {MODEL: lambda mo: _set_exprs(mo, "Pow(Integer(10), Integer(10**18))")}),
                   "unexpected expression"),  # sympy would compute it: a hang, not code, but refused alike
    "guard code": (lambda d, m: rewrite(d, {MODEL: lambda mo: mo["guards_code"].append(
        f"__import__('builtins').exec({_marker_code(m)!r}) == 0")}), "unexpected expression"),
    "node target": (lambda d, m: rewrite(d, {MODEL: lambda mo: mo["graph_module"]["graph"]["nodes"][1].update(
        target="torch.os.system")}), "calls 'torch.os.system'"),
    "parameter name": (lambda d, m: rewrite(d, {MODEL: lambda mo: mo["graph_module"]["signature"]["input_specs"][0]
                                                ["parameter"].update(parameter_name='lin")+exec("1')}), "refers to"),
    "native library": (lambda d, m: rewrite(d, {"data/aotinductor/model/model.so": b"\x7fELF"}),
                       "unexpected member 'data/aotinductor/model/model.so'"),
    "duplicate member": (lambda d, m: rewrite(d, {}, duplicate=MODEL), "two members of the same name"),
}


@pytest.mark.parametrize("case", list(CRAFTED))
def test_crafted_pt2_is_refused_before_torch_loads_it(tiny_pt2, tmp_path, case):
    from agents.exported import Pt2Runner
    from agents.pt2_archive import UnsafeProgramError

    marker = tmp_path / "marker.txt"
    craft, names = CRAFTED[case]
    path = tmp_path / "evil.pt2"
    path.write_bytes(craft(tiny_pt2, marker))
    with pytest.raises(UnsafeProgramError, match="refused without being loaded") as err:
        Pt2Runner(path, scenario=load_scenario("synthetic-3"))
    assert names in str(err.value) and "Fix:" in str(err.value)
    assert not marker.exists()


def test_crafted_pt2_runs_no_code_under_export_show_or_evaluate(tiny_pt2, tmp_path, capsys):
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.pt2"
    evil.write_bytes(CRAFTED["sample inputs pickle"][0](tiny_pt2, marker))
    for argv in (["export", "--show", str(evil)],
                 ["evaluate", "--scenario", "synthetic-3", "--policies", f"pt2:{evil}", "--seeds", "1",
                  "--workers", "1", "--no-plots", "--quiet", "--out", str(tmp_path / "out")]):
        assert main(argv) == 2
        assert not marker.exists(), argv
        err = capsys.readouterr().err
        assert "refused without being loaded" in err and "names the global" in err and "Fix:" in err, argv


def test_genuine_pt2_passes_the_check_and_loads(tiny_pt2, tmp_path, capsys):
    from agents.exported import _load_program
    from agents.pt2_archive import check_pt2_archive, count_nonfinite_weights

    archive = check_pt2_archive(tiny_pt2, "tiny.pt2")
    assert count_nonfinite_weights(archive.members) == (0, 8)
    program = _load_program(torch, archive.data, Path("tiny.pt2"))
    weight, bias = program.state_dict["lin.weight"], program.state_dict["lin.bias"]
    x, y = torch.randn(5, 3), torch.randn(5, 2)  # another size than the example's: the size is dynamic
    torch.testing.assert_close(program.module()(x, y), torch.relu(x @ weight.T + bias) + y)
    (tmp_path / "tiny.pt2").write_bytes(tiny_pt2)
    assert main(["export", "--show", str(tmp_path / "tiny.pt2")]) == 0
    assert json.loads(capsys.readouterr().out)["scenario"] == "synthetic-3"


def test_show_reads_pt2_metadata_without_torch(tiny_pt2, tmp_path):
    (tmp_path / "tiny.pt2").write_bytes(tiny_pt2)
    code = ("import json, sys\nfrom agents.exported import read_metadata\n"
            "meta = read_metadata(sys.argv[1])\n"
            "print(json.dumps([meta['scenario'], sorted(m for m in sys.modules if m.split('.')[0] == 'torch')]))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tiny.pt2")], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == ["synthetic-3", []]


# ------------------------------------------------------------------------------ non-finite weights
def test_pt2_with_non_finite_weights_is_refused(tiny_pt2, tmp_path):
    from agents.exported import Pt2Runner

    (path := tmp_path / "nan.pt2").write_bytes(
        rewrite(tiny_pt2, {"data/weights/weight_1": np.array([np.nan, 1.0], dtype="<f4").tobytes()}))
    with pytest.raises(ExportedPolicyError, match=r"non-finite weights \(1 of 8 values .*best\.pt.*--lr"):
        Pt2Runner(path, scenario=load_scenario("synthetic-3"))


def test_program_with_non_finite_scores_stops_with_a_message():
    """An ONNX file's weights are not read without running it: NaN weights show as NaN scores."""
    from agents.export_format import GRAPH_INPUTS
    from agents.exported import MASK_KEYS, ProgramScorer

    class NanRunner:
        def run(self, feeds):
            return [np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros((1, 2), np.int64),
                    np.array([[0.0, np.nan]], np.float32), np.ones(1, np.float32)]

    arrays = {**{k: np.zeros(1) for k in GRAPH_INPUTS}, "node_id": np.zeros(1, np.int64)}
    scorer = ProgramScorer(NanRunner(), Path("p.onnx")).for_round(arrays)
    with pytest.raises(ExportedPolicyError, match=r"p\.onnx computed non-finite task scores .*1 of 2.*best\.pt"):
        scorer.score(np.zeros(1, np.int64), {k: np.zeros(1) for k in MASK_KEYS})


@pytest.fixture(scope="module")
def small_net():
    sc = load_scenario("synthetic-3")
    torch.manual_seed(0)
    return sc, TapFingerNet(ModelConfig.for_scenario(sc, hidden=8, layers=1, heads=1))


def test_checkpoint_with_non_finite_parameters_is_refused(small_net, tmp_path):
    sc, net = small_net
    bad = TapFingerNet(net.cfg)
    bad.load_state_dict(net.state_dict())
    with torch.no_grad():
        first = next(bad.parameters())
        first.view(-1)[:3] = torch.tensor([float("nan"), float("inf"), float("-inf")])
    path = save_checkpoint(tmp_path / "checkpoint.pt", net=bad, scenario=sc, acting={}, step=5)
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint\.pt has 3 non-finite parameter values \(of "
                                              r"[\d,]+, in 1 tensor.*diverged.*Fix: .*best\.pt.*--lr"):
        load_checkpoint(path, sc)


# ------------------------------------------------------------------------------ damaged checkpoints
def _payload(small_net, tmp_path) -> dict:
    sc, net = small_net
    return dict(read_payload(save_checkpoint(tmp_path / "good.pt", net=net, scenario=sc, acting={}, step=1)))


def _without(p: dict, *keys) -> dict:
    return {k: v for k, v in p.items() if k not in keys}


def _config(p: dict, drop=(), **changes) -> dict:
    return {**p, "model_config": {**_without(p["model_config"], *drop), **changes}}


BROKEN = {
    "only the marker": (lambda p: {"format": FORMAT},
                        r"lacks the keys \['model_config', 'model_state', 'scenario', 'scenario_fingerprint'\]"),
    "no fingerprint": (lambda p: _without(p, "scenario_fingerprint"), r"lacks the keys \['scenario_fingerprint'\]"),
    "no weights": (lambda p: _without(p, "model_state"), r"lacks the keys \['model_state'\]"),
    "config not a table": (lambda p: {**p, "model_config": [1, 2]}, "'model_config' is a list, not a dict"),
    "config key missing": (lambda p: _config(p, drop=["num_types"]), r"model_config lacks \['num_types'\]"),
    "config key mistyped": (lambda p: _config(p, hidden="8"), r"model_config 'hidden' is '8' \(str\), not an int"),
    "config key unknown": (lambda p: _config(p, hiden=64), "model options this version does not know"),
    "weights of another shape": (lambda p: {**p, "model_state": {k: v[..., :1] if v.ndim else v
                                                                 for k, v in p["model_state"].items()}},
                                 "weights do not fit the model: .* of another shape, e.g. "),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_checkpoint_with_the_marker_but_broken_content_is_a_clear_error(small_net, tmp_path, case):
    sc, _ = small_net
    make, message = BROKEN[case]
    torch.save(make(_payload(small_net, tmp_path)), tmp_path / "broken.pt")
    with pytest.raises(CheckpointError, match=message) as err:
        load_checkpoint(tmp_path / "broken.pt", sc)
    assert str(tmp_path / "broken.pt") in str(err.value) and "Fix:" in str(err.value)


def test_checkpoint_or_exported_path_that_is_a_directory(tmp_path):
    from agents.exported import Pt2Runner, read_metadata
    from agents.learned.export import export_files

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is a directory, not a checkpoint file\. Fix: give the file itself: "
                                              r".*run/checkpoint\.pt"):
        read_payload(tmp_path / "run")
    with pytest.raises(ExportedPolicyError, match="is a directory, not a file. Fix: give the pt2 file"):
        Pt2Runner(tmp_path)
    (tmp_path / "run.pt2").mkdir()
    with pytest.raises(ExportedPolicyError, match="is a directory"):
        read_metadata(tmp_path / "run.pt2")
    with pytest.raises(ExportedPolicyError, match=r"--out .*run\.pt2 is a directory\. Fix: give a file name"):
        export_files("checkpoint.pt", {"pt2": tmp_path / "run.pt2"})  # refused before anything is read


@pytest.mark.parametrize("content, reason", [
    (lambda good: good[: len(good) // 2], "it is truncated or is not a zip archive"),
    (lambda good: b"hello, not a checkpoint", "it is truncated or is not a zip archive"),
])
def test_corrupted_checkpoint_message_is_complete(small_net, tmp_path, content, reason):
    sc, net = small_net
    good = save_checkpoint(tmp_path / "good.pt", net=net, scenario=sc, acting={}, step=1).read_bytes()
    (tmp_path / "bad.pt").write_bytes(content(good))
    with pytest.raises(CheckpointError) as err:
        read_payload(tmp_path / "bad.pt")
    text = str(err.value)
    assert text.startswith(f"checkpoint {tmp_path / 'bad.pt'} cannot be read: {reason}")
    assert "corrupted, truncated" in text and text.endswith("or retrain.")
    assert "miniz" not in text and "KeyError" not in text  # torch's internals, cut mid-sentence before


# ------------------------------------------------------------------------------ what differs
def test_fingerprint_parts_give_the_fingerprint():
    for sc in map(load_scenario, ("synthetic-3", "hetero-6", "edge-default")):
        parts = fingerprint_parts(sc)
        assert hashlib.sha256(repr(tuple(parts.values())).encode()).hexdigest()[:16] == scenario_fingerprint(sc)
        assert {"window", "visibility", "progress models", "switch weight"} <= set(parts)


def test_shipped_checkpoint_on_a_same_named_scenario_says_what_differs():
    """The shipped checkpoints store no parts: the built-in of the stored name, whose fingerprint
    matches, tells what differs."""
    other = dataclasses.replace(load_scenario("hetero-6"), window_size=5, visibility="all")
    with pytest.raises(CheckpointError, match=r"differs from this 'hetero-6' .*what differs: window \(10 in the "
                                              r"checkpoint, 5 here\), visibility \('random-subset' in the checkpoint, "
                                              r"'all' here\)\. Fix:"):
        load_checkpoint(REPO / "checkpoints" / "hetero-6.pt", other)


def test_new_checkpoint_on_a_same_named_scenario_says_what_differs(small_net, tmp_path):
    sc, net = small_net
    path = save_checkpoint(tmp_path / "c.pt", net=net, scenario=sc, acting={}, step=1)
    assert read_payload(path)["scenario_parts"]["window"] == repr(sc.window_size)
    types = (dataclasses.replace(sc.task_types[0], progress=dataclasses.replace(sc.task_types[0].progress,
                                                                                 base=0.3)), *sc.task_types[1:])
    with pytest.raises(CheckpointError, match=r"what differs: progress models \(.* in the checkpoint, .* here\)\."):
        load_checkpoint(path, dataclasses.replace(sc, task_types=types))


def test_checkpoint_without_parts_of_an_unknown_scenario_compares_the_network_shape(small_net, tmp_path):
    sc, _ = small_net
    payload = _payload(small_net, tmp_path)
    payload.pop("scenario_parts")
    payload["scenario"] = "my-own"  # not a built-in: nothing to compare but the network's shape
    torch.save(payload, tmp_path / "old.pt")
    with pytest.raises(CheckpointError, match=r"what differs: window \(10 in the checkpoint, 7 here\)\."):
        load_checkpoint(tmp_path / "old.pt", dataclasses.replace(sc, window_size=7))


def test_exported_policy_on_a_same_named_scenario_says_what_differs():
    sc = load_scenario("synthetic-3")
    meta = policy_metadata(sc)  # no stored parts, as files exported before this version
    with pytest.raises(ExportedPolicyError, match=r"differs from this 'synthetic-3' in one of: .* what differs: "
                                                  r"switch weight \(0\.5 in the file, 0\.9 here\)\. Fix:"):
        check_metadata(meta, Path("p.onnx"), dataclasses.replace(sc, switch_weight=0.9), "onnx")


# ------------------------------------------------------------------------------ small ones (item 14)
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporary_files_of_killed_saves_and_exports_are_removed(small_net, tmp_path, monkeypatch):
    """A SIGKILLed save or export leaves `.NAME.tmp-PID[.SUFFIX]`; the next write to the same place
    removes those of dead processes (and leaves a live one's, which may still be writing)."""
    from agents.learned import export

    sc, net = small_net
    stale = [tmp_path / f".c.pt.tmp-{_dead_pid()}", tmp_path / f".policy.pt2.tmp-{_dead_pid()}.pt2",
             tmp_path / f".policy.pt2.{_dead_pid()}.tmp.pt2"]  # the last: the name an earlier version used
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        busy = tmp_path / f".policy.pt2.tmp-{live.pid}.pt2"
        for f in (*stale, busy):
            f.write_bytes(b"partial")
        ckpt = save_checkpoint(tmp_path / "c.pt", net=net, scenario=sc, acting={}, step=1)
        tiny = tiny_program()
        monkeypatch.setattr(export, "export_program", lambda net, pointer=True: tiny)  # tracing is not the point
        export.export_files(ckpt, {"pt2": tmp_path / "policy.pt2"}, scenario=sc, verify=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([busy.name, "c.pt", "policy.pt2"])
    finally:
        live.kill()
        live.wait()


def test_tapfinger_mlp_uses_an_mlp_checkpoint_given_with_checkpoint(tmp_path):
    from agents.registry import policy_options

    sc = load_scenario("synthetic-3")
    mlp = TapFingerNet(ModelConfig.for_scenario(sc, hidden=8, layers=1, heads=1, encoder="mlp"))
    graph = TapFingerNet(ModelConfig.for_scenario(sc, hidden=8, layers=1, heads=1))
    mine = save_checkpoint(tmp_path / "mlp.pt", net=mlp, scenario=sc, acting={}, step=1)
    assert policy_options("tapfinger-mlp", sc, checkpoint=str(mine)) == {"checkpoint": str(mine)}
    other = save_checkpoint(tmp_path / "graph.pt", net=graph, scenario=sc, acting={}, step=1)
    with pytest.raises(ValueError, match=r"graph\.pt holds a graph-encoder network.*synthetic-3-mlp\.pt"):
        policy_options("tapfinger-mlp", sc, checkpoint=str(other))
