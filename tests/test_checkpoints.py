"""Checkpoints and exported policies are matched to scenarios by fingerprint; the shipped
checkpoints load on their scenarios and reproduce the evaluation they shipped with.

The fingerprint covers everything a trained policy depends on (resources, nodes, task types and
their progress models, the profile table's content, grid, window, visibility, switch weight,
preemption, slot and start-up seconds) and nothing it does not (arrivals, names, `max_slots`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agents.exported import FORMAT as EXPORT_FORMAT
from agents.exported import ExportedPolicyError, check_metadata, expected_layout
from tapfinger.sim.scenario import load_scenario, scenario_fingerprint
from tests.helpers import load_or_skip, missing_shared_data

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = REPO / "checkpoints"
SHIPPED = sorted(CHECKPOINTS.glob("*.pt"))
RESULTS = sorted(CHECKPOINTS.glob("*.json"))


def with_task(sc, index, **progress):
    """`sc` with task type `index`'s progress spec changed."""
    types = list(sc.task_types)
    t = types[index]
    types[index] = dataclasses.replace(t, progress=dataclasses.replace(t.progress, **progress))
    return dataclasses.replace(sc, task_types=tuple(types))


def renamed(sc):
    """The same content under other names (scenario, description, clusters)."""
    clusters = tuple(dataclasses.replace(c, name=f"site-{i}") for i, c in enumerate(sc.clusters))
    return dataclasses.replace(sc, name="renamed", description="another name, same scenario", clusters=clusters,
                               source="elsewhere.toml")


def other_arrivals(sc):
    return dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, rate=sc.arrivals.rate * 3 + 1,
                                                                tasks=sc.arrivals.tasks + 77), max_slots=123)


# variants of synthetic-3 that a policy trained on synthetic-3 must not serve (same name)
REFUSED = {
    "window": lambda sc: dataclasses.replace(sc, window_size=sc.window_size - 2),
    "switch_weight": lambda sc: dataclasses.replace(sc, switch_weight=0.9),
    "gpu_scale": lambda sc: with_task(sc, 1, gpu_scale=8.0),  # LM: tanh(g / 16) -> tanh(g / 8)
    "base": lambda sc: with_task(sc, 0, base=0.3),  # IMG: 0.25 per slot -> 0.3
    "visibility": lambda sc: dataclasses.replace(sc, visibility="all"),
    "preemption": lambda sc: dataclasses.replace(sc, allow_preemption=False),
    "slot_seconds": lambda sc: dataclasses.replace(sc, slot_seconds=4.0),
    "startup_seconds": lambda sc: dataclasses.replace(sc, startup_seconds=20.0),
    "minimum": lambda sc: dataclasses.replace(sc, task_types=(dataclasses.replace(sc.task_types[0], minimum=(3, 1)),
                                                              *sc.task_types[1:])),
}
ACCEPTED = {"arrivals": other_arrivals, "names": renamed}


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory):
    import torch

    from agents.learned.checkpoint import save_checkpoint
    from agents.learned.model import ModelConfig, TapFingerNet

    sc = load_scenario("synthetic-3")
    torch.manual_seed(0)
    net = TapFingerNet(ModelConfig.for_scenario(sc, hidden=16, layers=1))
    return sc, save_checkpoint(tmp_path_factory.mktemp("ckpt") / "c.pt", net=net, scenario=sc, acting={}, step=1)


@pytest.mark.parametrize("change", list(REFUSED))
def test_checkpoint_refused_for_a_same_named_scenario_with_other_dynamics(synthetic_checkpoint, change):
    from agents.learned.checkpoint import CheckpointError, load_checkpoint

    sc, path = synthetic_checkpoint
    other = REFUSED[change](sc)
    assert other.name == sc.name and other != sc
    with pytest.raises(CheckpointError, match="trained on scenario 'synthetic-3' .*which differs from "
                                              "this 'synthetic-3' .*in one of: .*switch weight.*Fix:"):
        load_checkpoint(path, other)


@pytest.mark.parametrize("change", list(ACCEPTED))
def test_checkpoint_accepted_for_other_arrivals_or_other_names(synthetic_checkpoint, change):
    from agents.learned.checkpoint import load_checkpoint

    sc, path = synthetic_checkpoint
    other = ACCEPTED[change](sc)
    assert other != sc
    assert load_checkpoint(path, other).step == 1  # matched by content, not by name


def exported_meta(sc) -> dict:
    """The metadata `tapfinger export` writes, as far as `check_metadata` reads it."""
    return {"format": EXPORT_FORMAT, "scenario": sc.name, "scenario_fingerprint": scenario_fingerprint(sc),
            "feature_layout": expected_layout(sc)}


@pytest.mark.parametrize("change", list(REFUSED))
def test_exported_policy_refused_for_a_same_named_scenario_with_other_dynamics(change):
    sc = load_scenario("synthetic-3")
    with pytest.raises(ExportedPolicyError, match="exported for scenario 'synthetic-3', which differs from "
                                                  "this 'synthetic-3' in one of: .*Fix:"):
        check_metadata(exported_meta(sc), Path("p.onnx"), REFUSED[change](sc), "onnx")


@pytest.mark.parametrize("change", list(ACCEPTED))
def test_exported_policy_accepted_for_other_arrivals_or_other_names(change):
    sc = load_scenario("synthetic-3")
    meta = exported_meta(sc)
    assert check_metadata(meta, Path("p.onnx"), ACCEPTED[change](sc), "onnx") is meta


def test_fingerprint_covers_the_profile_table_content_not_its_path(tmp_path):
    sc = load_scenario("local-testbed")  # its profile table ships with the package
    base = scenario_fingerprint(sc)
    copy = tmp_path / "copy.csv"
    shutil.copyfile(sc.profile, copy)
    assert scenario_fingerprint(dataclasses.replace(sc, profile=str(copy))) == base
    rows = Path(sc.profile).read_text().splitlines()
    assert rows[1].startswith("cnn,1,0,")
    cells = rows[1].split(",")
    cells[3] = str(float(cells[3]) * 2)  # cnn on 1 cpu measured twice as slow
    edited = tmp_path / "edited.csv"
    edited.write_text("\n".join([rows[0], ",".join(cells), *rows[2:]]) + "\n")
    assert scenario_fingerprint(dataclasses.replace(sc, profile=str(edited))) != base
    # which row of the table a task type reads is part of it too
    assert scenario_fingerprint(with_task(sc, 0, profile_task="audio")) != base
    # a profile file no task type reads does not count
    syn = load_scenario("synthetic-3")
    assert scenario_fingerprint(dataclasses.replace(syn, profile=str(edited))) == scenario_fingerprint(syn)


def test_fingerprints_of_the_built_in_scenarios_differ():
    from tapfinger.sim.scenario import builtin_names

    prints, variants = {}, {}
    for name in builtin_names():
        if missing_shared_data(name) is None:
            sc = load_scenario(name)
            (variants if sc.uncertainty.active or sc.faults.active else prints)[name] = scenario_fingerprint(sc)
    assert len(prints) >= 5 and len(set(prints.values())) == len(prints), prints
    # An `[uncertainty]` variant is its base scenario with hidden per-task truth, and a `[faults]`
    # variant its base on unreliable nodes; the fingerprint leaves both out (as it does the
    # arrivals): the base's policy runs on them.
    bases = {"edge-faulty": "edge-default"}
    for name, fingerprint in variants.items():
        base = bases.get(name, name.removesuffix("-uncertain"))
        assert base in prints and fingerprint == prints[base], (name, fingerprint, prints.get(base))


# ------------------------------------------------------------------------------ shipped checkpoints


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_checkpoint_loads_on_its_scenario(path):
    from agents.learned.checkpoint import load_checkpoint, read_payload

    payload = read_payload(path)
    assert payload["scenario"] == path.stem
    sc = load_or_skip(path.stem)  # trace scenarios need ../shared/data
    assert payload["scenario_fingerprint"] == scenario_fingerprint(sc)
    assert load_checkpoint(path, sc).net is not None


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_checkpoint_has_its_evaluation_results(path):
    assert path.with_suffix(".json").is_file(), (
        f"{path.name} ships without {path.stem}.json (the `tapfinger evaluate` results it shipped with)")


def _long(path: Path) -> bool:
    """Whether one episode of the results' scenario is long. Measured on 2 shared cores, one torch
    thread: synthetic-3 (192 tasks) 1.2 s, hetero-6 (384) 1.4 s, edge-default (300) 2.1 s,
    trace-3 (1000) 10 s; only scenarios of more tasks than that are marked slow."""
    try:
        name = json.loads(path.read_text())["scenario"]
        return load_scenario(name, resolve_files=False).arrivals.tasks > 1000
    except (OSError, ValueError, KeyError):
        return False


@pytest.mark.parametrize("path", [pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if _long(p) else [])
                                  for p in RESULTS])
def test_shipped_checkpoint_reproduces_its_stored_evaluation(path):
    """`tapfinger evaluate` of the shipped policy on the results' first seed gives the same average
    JCT (the greedy policy and the simulator are deterministic)."""
    import torch

    from agents.registry import make_policy
    from envs.episode import run_episode

    results = json.loads(path.read_text())
    name = results["scenario"]
    assert name == path.stem
    checkpoint = path.with_suffix(".pt")
    assert checkpoint.is_file(), f"{path.name} has no checkpoint {checkpoint.name} beside it"
    sc = load_or_skip(name)  # trace scenarios need ../shared/data
    seed = int(results["seeds"][0])
    stored = results["policies"]["tapfinger"]["avg_jct"]["per_seed"][0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `tapfinger evaluate` runs
    try:
        result = run_episode(sc, make_policy("tapfinger", sc, seed=seed, checkpoint=str(checkpoint)), seed)
    finally:
        torch.set_num_threads(threads)
    assert not result.truncated and result.invalid_actions == 0
    assert np.isfinite(stored) and result.avg_jct == pytest.approx(stored, rel=0, abs=1e-9), (seed, result.avg_jct)


# ------------------------------------------------------------------------------ saving and safe loading


def test_checkpoint_saved_into_a_folder_that_does_not_exist_yet(synthetic_checkpoint, tmp_path):
    from agents.learned.checkpoint import load_checkpoint, save_checkpoint

    sc, path = synthetic_checkpoint
    net = load_checkpoint(path, sc).net
    target = tmp_path / "runs" / "new" / "deeper" / "checkpoint.pt"
    assert not target.parent.parent.exists()
    assert save_checkpoint(target, net=net, scenario=sc, acting={"k": 1}, step=7) == target
    loaded = load_checkpoint(target, sc)
    assert loaded.step == 7 and loaded.acting == {"k": 1}


def _write_marker(path: str) -> str:
    """What unpickling the crafted payload would run: it leaves a file behind."""
    Path(path).write_text("code from the checkpoint ran")
    return "pwned"


class _Planted:
    """An object of an arbitrary class whose unpickling calls `_write_marker`."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_write_marker, (self.marker,))


def test_checkpoint_with_a_pickled_arbitrary_object_is_refused_without_running_it(tmp_path):
    import torch

    from agents.learned.checkpoint import FORMAT, CheckpointError, load_checkpoint, read_payload

    marker = tmp_path / "marker.txt"
    crafted = tmp_path / "crafted.pt"
    # otherwise a well-formed payload: only the planted object makes it unsafe
    torch.save({"format": FORMAT, "scenario": "synthetic-3", "step": 1, "acting": {}, "extra": _Planted(marker)},
               crafted)
    assert not marker.exists()  # saving ran nothing
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_payload(crafted)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(crafted, load_scenario("synthetic-3"))
    assert not marker.exists()


def test_refusal_for_another_model_configuration_names_only_the_differing_field(synthetic_checkpoint):
    from agents.learned.checkpoint import CheckpointError, load_checkpoint
    from agents.learned.model import ModelConfig

    sc, path = synthetic_checkpoint  # hidden=16, layers=1
    asked = ModelConfig.for_scenario(sc, hidden=32, layers=1)
    with pytest.raises(CheckpointError, match="another model configuration") as err:
        load_checkpoint(path, sc, expect_config=asked)
    text = str(err.value)
    assert "'hidden': (16, 32)" in text
    for same in ("layers", "heads", "window", "num_types", "encoder"):
        assert f"'{same}'" not in text, same
    assert load_checkpoint(path, sc, expect_config=ModelConfig.for_scenario(sc, hidden=16, layers=1)).step == 1
