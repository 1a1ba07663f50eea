"""`tapfinger train` under interruption and bad settings (issue 11 items 2, 5, 6, 12): Ctrl-C
with worker processes stops promptly with one line and no orphan; a diverged run stops with a
clear message and never saves non-finite weights; --resume refuses changed hyperparameters and
keeps the run's values for flags not given."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agents.learned.checkpoint import CheckpointError, read_payload
from agents.learned.config import ModelOptions, PPOConfig, TrainConfig
from agents.learned.train import Trainer
from tests.helpers import default_sigint, small

ROOT = Path(__file__).resolve().parent.parent


def tiny(run_dir, total, **kw) -> TrainConfig:
    return TrainConfig(scenario="synthetic-3", run_dir=str(run_dir), envs=2, workers=1, total_steps=total,
                       model=ModelOptions(hidden=16, layers=1), imitate="min", imitation_episodes=1,
                       imitation_epochs=1, eval_every=0, ppo=PPOConfig(epochs=1, minibatch_rounds=16), **kw)


def _group_members(pgid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                pids.append(int(d.name))
    return pids


def test_ctrl_c_stops_training_with_workers_promptly_and_leaves_no_process(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "tapfinger.cli", "train", "--scenario", "synthetic-3", "--run-dir", str(run),
           "--envs", "4", "--workers", "2", "--total-steps", "100000000", "--imitation-episodes", "2",
           "--imitation-epochs", "1", "--eval-every", "0", "--hidden", "16", "--layers", "1", "--quiet"]
    # its own process group with SIGINT at its default, as a terminal's job is
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)
    try:
        deadline = time.time() + 240
        while not (run / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (run / "checkpoint.pt").exists(), proc.communicate()[1]
        time.sleep(2.0)  # into the PPO iterations, with the workers collecting
        assert len(_group_members(proc.pid)) >= 3  # the trainer and its two workers
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole group
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err and "--resume" in err
    assert len([line for line in err.strip().splitlines() if line.strip()]) == 1, err
    time.sleep(0.5)
    assert _group_members(proc.pid) == []  # no orphan worker
    read_payload(run / "checkpoint.pt")  # what was saved is a whole checkpoint


def test_diverged_run_stops_with_a_clear_message_and_saves_nothing_non_finite(tmp_path):
    sc = small("synthetic-3", tasks=12)
    cfg = dataclasses.replace(tiny(tmp_path, 400), ppo=PPOConfig(lr=1e4, epochs=2, minibatch_rounds=8,
                                                                 max_grad_norm=1e9))
    with pytest.raises(RuntimeError, match=r"diverged.*Fix: lower --lr \(now 10000.0\)"):
        Trainer(cfg, sc, progress=False).train(log=lambda *_: None)
    path = tmp_path / "checkpoint.pt"
    if path.exists():  # the last finite iteration (the warm start at least) is what is kept
        state = read_payload(path)["model_state"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_resume_refuses_a_changed_hyperparameter_naming_its_flag(tmp_path):
    sc = small("synthetic-3", tasks=12)
    Trainer(tiny(tmp_path, 30), sc, progress=False).train(log=lambda *_: None)
    changed = dataclasses.replace(tiny(tmp_path, 60), ppo=PPOConfig(lr=0.1, epochs=1, minibatch_rounds=16))
    with pytest.raises(CheckpointError, match=r"--lr 0.1 differs from the run's 0.0003"):
        Trainer(changed, sc, resume=True, progress=False)
    with pytest.raises(CheckpointError, match=r"--envs 3 differs from the run's 2"):
        Trainer(dataclasses.replace(tiny(tmp_path, 60), envs=3), sc, resume=True, progress=False)
    more = dataclasses.replace(tiny(tmp_path, 60), workers=2, eval_every=1, eval_seeds=1, eval_heuristic="min")
    assert Trainer(more, sc, resume=True, progress=False).iteration > 0  # these may change


def test_resume_from_the_command_line_keeps_the_runs_values(tmp_path):
    from tapfinger.cli.train import parse, resume_command

    sc = small("synthetic-3", tasks=12)
    Trainer(dataclasses.replace(tiny(tmp_path, 30), ppo=PPOConfig(lr=1e-3, epochs=1, minibatch_rounds=16)), sc,
            progress=False).train(log=lambda *_: None)
    argv = ["--scenario", "synthetic-3", "--run-dir", str(tmp_path), "--resume", "--total-steps", "60"]
    cmd = resume_command(argv, parse(argv))
    assert cmd.training.ppo.lr == 1e-3 and cmd.training.model.hidden == 16 and cmd.training.envs == 2
    assert cmd.training.total_steps == 60 and cmd.resume
    argv_lr = argv + ["--lr", "0.01"]
    cmd = resume_command(argv_lr, parse(argv_lr))
    assert cmd.training.ppo.lr == 0.01  # given: it differs, and the Trainer refuses it
    with pytest.raises(CheckpointError, match="--lr 0.01 differs"):
        Trainer(cmd.training, sc, resume=True, progress=False)
