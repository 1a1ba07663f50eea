"""The policy registry resolves a name to its class, and the class (not the name's spelling) says
whether a policy is learned and whether it is built from a checkpoint."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agents.base import Policy
from agents.registry import make_policy, policy_class, policy_names, policy_options
from tapfinger.evaluation.harness import is_heuristic
from tapfinger.sim.scenario import load_scenario

REPO = Path(__file__).resolve().parent.parent


def test_names_resolve_to_policy_classes():
    from agents.exported import ExportedPolicy
    from agents.learned.policy import LearnedPolicy

    for name in policy_names():
        assert issubclass(policy_class(name), Policy), name
    assert policy_class("tapfinger-no-bayes") is LearnedPolicy
    assert policy_class("onnx:any/file.onnx") is ExportedPolicy and policy_class("pt2:x.pt2") is ExportedPolicy
    with pytest.raises(ValueError, match="unknown policy 'nonsense'"):
        policy_class("nonsense")
    with pytest.raises(ValueError, match="unknown policy 'tflite:x'"):
        policy_class("tflite:x")


def test_learned_is_what_the_class_says():
    for name in policy_names() + ["onnx:e.onnx", "pt2:e.pt2"]:
        assert is_heuristic(name) == (not policy_class(name).learned), name
    assert not is_heuristic("tapfinger-mlp") and not is_heuristic("onnx:e.onnx")
    assert is_heuristic("greedy") and is_heuristic("optimus-paper")


def test_checkpoint_options_follow_the_class(tmp_path):
    sc = load_scenario("synthetic-3")
    assert policy_options("greedy", sc) == {}
    assert policy_options("onnx:policy.onnx", sc, checkpoint="ignored.pt") == {}  # the file is the policy
    assert policy_options("tapfinger", sc, checkpoint="mine.pt") == {"checkpoint": "mine.pt"}
    assert policy_options("tapfinger-no-bayes", sc)["checkpoint"].endswith("synthetic-3.pt")  # shipped
    with pytest.raises(ValueError, match="no checkpoint"):
        policy_options("tapfinger", load_scenario("synthetic-6"))
    with pytest.raises(ValueError, match="synthetic-3-mlp.pt"):  # trained separately: not --checkpoint
        policy_options("tapfinger-mlp", sc, checkpoint="mine.pt")


def test_make_policy_builds_the_registered_class():
    sc = load_scenario("synthetic-3")
    assert type(make_policy("fifo", sc)) is policy_class("fifo")


def test_heuristic_only_evaluation_never_imports_torch(tmp_path):
    code = ("import sys\n"
            "from tapfinger.cli.main import main\n"
            f"rc = main(['evaluate', '--scenario', 'synthetic-3', '--policies', 'greedy,min', '--seeds', '1', "
            f"'--workers', '1', '--quiet', '--no-plots', '--out', {str(tmp_path)!r}])\n"
            "assert rc == 0, rc\n"
            "loaded = [m for m in ('torch', 'torch_geometric') if m in sys.modules]\n"
            "assert not loaded, loaded\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "results.json").is_file()
