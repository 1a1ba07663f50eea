"""`tapfinger-geo` (issue 16): valid decisions by construction, the PPO ratio at 1 before the first
step, behaviour cloning that learns, a seeded training run, refused checkpoints, the shipped one."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from agents.geo.learned.acting import decode, score_slots, slot_inputs  # noqa: E402
from agents.geo.learned.checkpoint import (FORMAT, CheckpointError, load_geo_checkpoint,  # noqa: E402
                                           save_geo_checkpoint)
from agents.geo.learned.collect import play, sample_generator  # noqa: E402
from agents.geo.learned.config import GeoModelOptions, GeoPPOOptions, GeoTrainConfig  # noqa: E402
from agents.geo.learned.model import GeoNet, GeoNetConfig  # noqa: E402
from agents.geo.learned.policy import GeoLearnedPolicy, default_checkpoint  # noqa: E402
from agents.geo.learned.ppo import collect, ppo_update, train  # noqa: E402
from agents.geo.learned.train import bc_fit, make_run, resolve_device  # noqa: E402
from agents.geo.okita import OkitaPolicy  # noqa: E402
from agents.geo.simple import FifoPolicy  # noqa: E402
from envs.geo_episode import run_geo_episode  # noqa: E402
from tapfinger.sim.geo.engine import GeoEngine  # noqa: E402
from tapfinger.sim.geo.scenario import load_geo_scenario  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SC = load_geo_scenario("geo-6")


class NullWriter:
    def add_scalar(self, *a, **k):
        pass

    def flush(self):
        pass


def net_for(hint: bool, seed: int = 0, noise: float = 0.3) -> GeoNet:
    """A network with every parameter (biases too) perturbed: choices differ from the teacher's and
    no bias is zero, so batching mistakes would show in the log-probabilities."""
    torch.manual_seed(seed)
    net = GeoNet(GeoNetConfig(SC.num_sites, SC.num_resources, SC.max_workers_per_site, SC.window, hidden=16,
                              teacher_hint=hint))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(noise * torch.randn_like(p))
    return net


def tiny_config(tmp_path: Path, **kw) -> GeoTrainConfig:
    base = dict(run_dir=str(tmp_path), bc_episodes=2, bc_epochs=1, dagger_rounds=1, dagger_episodes=1, iterations=1,
                episodes=2, eval_every=1, eval_seeds=1, model=GeoModelOptions(hidden=16),
                ppo=GeoPPOOptions(rollouts_per_seed=2, epochs=1))
    base.update(kw)
    return GeoTrainConfig(**base)


@pytest.mark.parametrize("hint", [False, True])
def test_sampled_decisions_are_always_valid(hint):
    """Random states: a few slots of fifo first (its placements then stand as the current ones),
    then the sampling learner; every decision passes the engine's own check."""
    net, eng, rng = net_for(hint, seed=int(hint)), GeoEngine(SC), np.random.default_rng(0)
    checked = 0
    for seed in range(4):
        eng.reset(seed)
        fifo, okita = FifoPolicy(), OkitaPolicy()
        fifo.reset(SC, seed)
        okita.reset(SC, seed)
        for _ in range(int(rng.integers(0, 8))):
            if not eng.done:
                eng.step(fifo.decide(eng))
        gen = sample_generator(0, 0, seed)
        while not eng.done:
            inp = slot_inputs(eng, okita if hint else None)
            if inp is None:
                eng.step(fifo.decide(eng))
                continue
            decision, record = decode(net, eng, inp, "sample", gen)
            assert eng.decision_problem(decision) is None
            assert np.isfinite(record.logp)
            checked += 1
            eng.step(decision)
    assert checked > 20


def test_recomputed_logp_equals_the_recorded_one(tmp_path):
    """score_slots (batched, as the PPO update scores) gives collection's log-probability, and the
    first PPO minibatch's ratio is 1."""
    net, eng = net_for(True, seed=3, noise=0.1), GeoEngine(SC)
    episodes = [play(net, eng, s, "okita", "sample", sample_generator(1, 2, s)) for s in (5, 5)]
    records = [r for e in episodes for r in e.records]
    logp, entropy, _ = score_slots(net, records)
    recorded = torch.tensor([r.logp for r in records])
    assert torch.allclose(logp.detach(), recorded, atol=1e-4)
    assert float(entropy.detach().min()) >= 0.0
    run = make_run(tiny_config(tmp_path), writer=NullWriter())
    eps = collect(run, 0)
    stats = ppo_update(run, torch.optim.Adam(run.net.parameters(), lr=1e-3), eps)
    assert stats["ratio0"] < 1e-4


def test_behaviour_cloning_lowers_the_loss(tmp_path):
    run = make_run(tiny_config(tmp_path, bc_lr=3e-3), writer=NullWriter())
    data = [r for s in range(3) for r in play(run.actor, run.engine, s, "okita", "teacher").records]
    before = float(-score_slots(run.net, data)[0].mean())
    after = bc_fit(run, data, 4, "bc")
    assert after < before
    assert float(-score_slots(run.net, data)[0].mean()) < before


def test_short_training_writes_a_loadable_checkpoint_and_is_seeded(tmp_path):
    states = []
    for k in range(2):
        run = train(tiny_config(tmp_path / str(k)), writer=NullWriter(), progress=False)
        net, payload = load_geo_checkpoint(tmp_path / str(k) / "last.pt", SC)
        assert payload["format"] == FORMAT and payload["scenario"] == "geo-6" and payload["iteration"] == 1
        assert (tmp_path / str(k) / "best.pt").is_file()
        states.append(run.net.state_dict())
    assert all(torch.equal(states[0][key], states[1][key]) for key in states[0])


def test_devices_and_flags_are_checked():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="--rollouts-per-seed"):
        GeoTrainConfig(episodes=6, ppo=GeoPPOOptions(rollouts_per_seed=4)).validate()
    with pytest.raises(ValueError, match="--heads"):
        GeoTrainConfig(model=GeoModelOptions(hidden=15, heads=2)).validate()


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _saved(tmp_path: Path, **change) -> Path:
    path = tmp_path / "ok.pt"
    save_geo_checkpoint(path, net_for(True, noise=0.0), SC, "okita")
    payload = torch.load(path, weights_only=True)
    payload.update(change)
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    return bad


def test_crafted_checkpoints_are_refused(tmp_path):
    marker = tmp_path / "ran"
    evil = _Payload()
    evil.marker = marker
    code = tmp_path / "code.pt"
    with open(code, "wb") as f:
        pickle.dump({"format": FORMAT, "x": evil}, f)
    torch.save({"format": FORMAT, "model_state": {"w": evil}}, tmp_path / "code2.pt")
    for path in (code, tmp_path / "code2.pt"):
        with pytest.raises(CheckpointError, match="cannot be read"):
            load_geo_checkpoint(path, SC)
    assert not marker.exists()  # the payload never ran
    with pytest.raises(CheckpointError, match="format marker"):
        load_geo_checkpoint(_saved(tmp_path, format="tapfinger-checkpoint-1"), SC)
    with pytest.raises(CheckpointError, match="trained on geo scenario 'geo-50'"):
        load_geo_checkpoint(_saved(tmp_path, scenario="geo-50"), SC)
    with pytest.raises(CheckpointError, match="layout"):
        load_geo_checkpoint(_saved(tmp_path, fingerprint="0" * 16), SC)
    state = torch.load(tmp_path / "ok.pt", weights_only=True)["model_state"]
    state = {k: v.clone() for k, v in state.items()}
    next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    with pytest.raises(CheckpointError, match="non-finite"):
        load_geo_checkpoint(_saved(tmp_path, model_state=state), SC)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_geo_checkpoint(tmp_path / "missing.pt", SC)
    for teacher in ("tapfinger-geo", "os.system"):  # built by name when the policy plays: heuristics only
        with pytest.raises(CheckpointError, match="is not a geo heuristic"):
            load_geo_checkpoint(_saved(tmp_path, teacher=teacher), SC)
    other = replace(SC, window=SC.window + 1)
    with pytest.raises(CheckpointError, match="window"):
        load_geo_checkpoint(tmp_path / "ok.pt", other)


def test_shipped_checkpoint_plays_a_full_episode():
    assert default_checkpoint(SC).is_file(), "checkpoints/geo/geo-6.pt ships with the repository"
    policy = GeoLearnedPolicy()
    result = run_geo_episode(SC, policy, 1000)
    assert result.unfinished == 0 and not result.truncated
    assert np.isfinite(result.total_cost) and result.total_cost > 0
    again = run_geo_episode(SC, policy, 1000)
    assert again.total_cost == result.total_cost  # greedy play: the same episode again


def test_shipped_checkpoint_reproduces_its_stored_evaluation():
    """checkpoints/geo/geo-6.json holds the evaluation the policy shipped with: its first seed again."""
    import json

    results = json.loads(default_checkpoint(SC).with_suffix(".json").read_text())
    assert results["scenario"] == SC.name and results["family"] == "geo"
    seed = int(results["seeds"][0])
    stored = results["policies"]["tapfinger-geo"]["total_cost"]["per_seed"][0]
    assert run_geo_episode(SC, GeoLearnedPolicy(), seed).total_cost == pytest.approx(stored, rel=1e-12)
