"""The profiler: a real measurement of a tiny model on one CPU, resume, and the profile it writes."""

from __future__ import annotations

import csv
import json
import math
import time

import numpy as np
import pytest

from tapfinger.testbed.errors import ProfilerError
from tapfinger.testbed.models import model_config
from tapfinger.testbed.profile_files import CSV_COLUMNS, sidecar_path
from tapfinger.testbed.profiler import ProfileRequest, plan_jobs, run_profile
from tapfinger.sim.progress import profile_tables, read_profile

# Tests must not wait for idle CPUs or re-measure on a busy machine.
QUICK = {"wait_idle": 0.0, "retries": 0}


def test_profile_writes_a_row_and_resume_skips_it(tmp_path):
    out = tmp_path / "p.csv"
    req = ProfileRequest(models=("cnn-tiny",), cpus=(1,), gpus=(0,), samples=16, warmup=1, **QUICK)
    messages: list[str] = []
    t0 = time.perf_counter()
    rows = run_profile(req, out, progress=False, log=messages.append, argv=req.command(out))
    wall = time.perf_counter() - t0
    assert len(rows) == 1

    with out.open() as fh:
        lines = list(csv.reader(fh))
    assert tuple(lines[0]) == CSV_COLUMNS and len(lines) == 2
    row = dict(zip(lines[0], lines[1]))
    assert (row["task"], row["cpus"], row["gpus"], row["model"]) == ("cnn-tiny", "1", "0", "cnn-tiny")
    assert float(row["seconds"]) > 0 and float(row["step_seconds"]) > 0
    assert int(row["steps"]) == 2 and int(row["samples"]) == 16 == 2 * int(row["batch_size"])
    assert 50 < float(row["peak_mem_mb"]) < 4000  # a python + torch process, in MiB
    assert row["gpu_mem_mb"] == "" and 0 <= float(row["contention"]) <= 1

    # The measured fields hang together (definitions in the sidecar's "columns"):
    # steps = ceil(samples / batch size); `seconds` is the wall time of all timed steps and
    # `step_seconds` their median, which for two steps is the slower one: so the total is
    # more than the median (it holds the faster step too) and at most two medians, plus the
    # bookkeeping between steps. Set-up (interpreter start, torch import, model, warm-up) takes
    # longer than two steps of this tiny model, and both happened within this call.
    seconds, step, setup = float(row["seconds"]), float(row["step_seconds"]), float(row["setup_seconds"])
    assert int(row["steps"]) == math.ceil(req.samples / model_config("cnn-tiny").batch_size)
    assert int(row["batch_size"]) == model_config("cnn-tiny").batch_size
    assert step < seconds <= int(row["steps"]) * step + 0.25
    assert math.isfinite(setup) and seconds < setup and setup + seconds < wall
    # what the CSV holds is what the call returned (to the 6 significant digits written)
    got = rows[0]
    assert (got["task"], got["cpus"], got["gpus"], got["model"]) == ("cnn-tiny", 1, 0, "cnn-tiny")
    assert (got["steps"], got["samples"], got["batch_size"]) == (2, 16, 8) and got["gpu_mem_mb"] is None
    for col in ("seconds", "step_seconds", "peak_mem_mb", "setup_seconds", "contention"):
        assert float(row[col]) == pytest.approx(got[col], rel=1e-5), col

    # the profile reader (and so every scenario) reads it back, header and memory included
    table = read_profile(out)
    assert table.tasks() == ["cnn-tiny"]
    assert table.lookup("cnn-tiny", 1, 0) == pytest.approx(float(row["seconds"]))
    assert table.peak_mem_gib[("cnn-tiny", 1, 0)] == pytest.approx(float(row["peak_mem_mb"]) / 1024)

    side = json.loads(sidecar_path(out).read_text())
    assert side["machine"]["torch"] and side["machine"]["cpu_model"] and side["machine"]["usable_cpus"] >= 1
    assert side["parameters"]["samples"] == 16 and "cnn-tiny" in side["parameters"]["models"]
    assert side["commands"] == [req.command(out)]

    # resume: nothing left to measure, so no measurement may run
    def must_not_run(job):
        raise AssertionError(f"re-measured {job}")

    assert run_profile(req, out, progress=False, log=messages.append, measure_fn=must_not_run) == []
    assert any("1 measurement(s) already there, 0 to go" in m for m in messages)
    assert len(out.read_text().splitlines()) == 2

    # resuming with other parameters would mix incomparable rows
    with pytest.raises(ProfilerError, match=r"--samples 16.*Fix: resume with --samples 16"):
        run_profile(ProfileRequest(models=("cnn-tiny",), cpus=(1,), samples=32, warmup=1, **QUICK), out,
                    progress=False, log=messages.append, measure_fn=must_not_run)


def test_resume_measures_only_the_missing_rows_and_appends(tmp_path):
    out = tmp_path / "p.csv"
    fake = {"seconds": 2.0, "step_seconds": 0.5, "steps": 4, "samples": 16, "peak_mem_mb": 300.0,
            "gpu_mem_mb": None, "setup_seconds": 3.0}
    calls = []

    def fake_measure(job):
        calls.append(job.key)
        if len(calls) == 2:
            raise KeyboardInterrupt  # interrupted during the second measurement
        return fake

    req = ProfileRequest(models=("lm-tiny", "audio-tiny"), cpus=(1,), samples=16, repeats=1, **QUICK)
    with pytest.raises(KeyboardInterrupt):
        run_profile(req, out, progress=False, log=lambda s: None, measure_fn=fake_measure)
    assert len(out.read_text().splitlines()) == 2  # header + the finished row, flushed
    calls.clear()
    run_profile(req, out, progress=False, log=lambda s: None, measure_fn=lambda j: calls.append(j.key) or fake)
    assert calls == [("audio-tiny", 1, 0)]
    assert sorted(read_profile(out).tasks()) == ["audio-tiny", "lm-tiny"]


def test_gpu_counts_are_skipped_without_cuda(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    messages: list[str] = []
    req = ProfileRequest(models=("cnn-tiny",), cpus=(1,), gpus=(0, 1), samples=8, **QUICK)
    fake = {"seconds": 1.0, "step_seconds": 1.0, "steps": 1, "samples": 8, "peak_mem_mb": 1.0}
    rows = run_profile(req, tmp_path / "p.csv", progress=False, log=messages.append, measure_fn=lambda j: fake)
    assert [(r["cpus"], r["gpus"]) for r in rows] == [(1, 0)]
    assert any("skipping --gpus 1: CUDA is not available" in m for m in messages)


def test_plan_and_flag_errors():
    jobs = plan_jobs(ProfileRequest(models=("cnn", "lm-tiny"), cpus=(1,), batch_sizes=(4, 8), repeats=2))
    assert [j.task for j in jobs] == ["cnn-b4"] * 2 + ["cnn-b8"] * 2 + ["lm-tiny-b4"] * 2 + ["lm-tiny-b8"] * 2
    assert model_config("lm").size == "small" and model_config("audio-base").family == "audio"
    with pytest.raises(ProfilerError, match=r"unknown model 'resnet'.*Fix: use one of cnn, lm, audio"):
        plan_jobs(ProfileRequest(models=("resnet",), cpus=(1,)))
    with pytest.raises(ProfilerError, match=r"--cpus 4096: this process may use only"):
        plan_jobs(ProfileRequest(models=("cnn",), cpus=(4096,)))


def test_cpu_only_profile_gives_no_gpu_speed_up(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("task,cpus,gpus,seconds,peak_mem_mb\nx,1,0,10,500\nx,2,0,6,510\n")
    weight, rate = profile_tables(read_profile(path), "x", 1, 0, 2, 2, 5.0, 0.0)
    assert (weight == 0).all()
    np.testing.assert_allclose(rate[1], [0.5, 0.5, 0.5])
    np.testing.assert_allclose(rate[2], [5 / 6] * 3)
    assert (rate[0] == 0).all()  # below the CPU minimum


def test_shipped_profile_is_well_formed():
    from importlib import resources

    path = resources.files("tapfinger").joinpath("data", "local_profile.csv")
    table = read_profile(str(path))
    assert set(table.tasks()) == {"cnn", "lm", "audio"}
    for task in table.tasks():
        for cpus in (1, 2):
            assert table.lookup(task, cpus, 0) > 0 and table.peak_mem_gib[(task, cpus, 0)] > 0
    side = json.loads(resources.files("tapfinger").joinpath("data", "local_profile.json").read_text())
    assert side["machine"]["torch"].startswith("2.")


def test_disturbed_measurements_are_repeated_and_the_cleanest_kept(tmp_path):
    results = iter([0.6, 0.05, 0.01])
    calls = []

    def fake(job):
        shared = next(results)
        calls.append(shared)
        return {"seconds": 10 * shared, "step_seconds": 1.0, "steps": 1, "samples": 8, "peak_mem_mb": 1.0,
                "contention": shared}

    messages: list[str] = []
    req = ProfileRequest(models=("cnn-tiny",), cpus=(1,), samples=8, wait_idle=0.0, retries=2, max_contention=0.1)
    rows = run_profile(req, tmp_path / "p.csv", progress=False, log=messages.append, measure_fn=fake)
    assert calls == [0.6, 0.05]  # the second is good enough: no third attempt
    assert rows[0]["contention"] == 0.05 and rows[0]["seconds"] == 0.5
    assert any("other processes used 60% of its CPUs; measuring again" in m for m in messages)
