"""`tapfinger profile`: measure how fast real training tasks run under each (CPUs, GPUs) allocation.

It trains a few real PyTorch steps of small built-in models (tapfinger/testbed/models.py;
synthetic inputs, nothing is downloaded) and writes a profile CSV that
`tapfinger.sim.progress.read_profile` reads:

    task,cpus,gpus,seconds,peak_mem_mb,<extra columns>

`seconds` is the wall time of a fixed amount of work (`samples` training samples, after a
few untimed warm-up steps), which is the "completion time" T of the testbed schema; a
scenario turns it into progress per slot as `slot / (T + startup_seconds)`.

This module plans the run (`plan_jobs`), skips what an interrupted run already wrote, and
measures the rest one at a time, waiting for idle CPUs and re-measuring disturbed rows. The
pieces: tapfinger/testbed/measurement.py (one measurement in a pinned subprocess),
tapfinger/testbed/machine.py (the machine and its CPU accounting),
tapfinger/testbed/profile_files.py (the CSV and its sidecar). docs/profiling.md has the details.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from tapfinger.testbed.errors import ProfilerError
from tapfinger.testbed.machine import describe_machine, idle_share, usable_cpus
from tapfinger.testbed.measurement import Job, measure
from tapfinger.testbed.models import model_config, model_names
from tapfinger.testbed.profile_files import (RowAppender, check_out, check_resume, existing_rows, profile_row,
                                             write_sidecar)

Log = Callable[[str], None]
MeasureFn = Callable[[Job], dict[str, Any]]


@dataclass(frozen=True)
class ProfileRequest:
    """What `tapfinger profile` was asked to measure."""

    models: tuple[str, ...]
    cpus: tuple[int, ...]
    gpus: tuple[int, ...] = (0,)
    batch_sizes: tuple[int, ...] = ()  # empty = each model's default batch size
    samples: int = 512
    warmup: int = 2
    repeats: int = 1
    seed: int = 0
    wait_idle: float = 60.0  # seconds to wait, before each measurement, for its CPUs to be idle
    max_contention: float = 0.1  # re-measure when other processes took more of the CPUs than this
    retries: int = 2  # re-measurements allowed per row (the least disturbed one is kept)

    def command(self, out: str | Path) -> list[str]:
        """The `tapfinger profile` command line that reproduces this request."""
        cmd = ["tapfinger", "profile", "--models", ",".join(self.models),
               "--cpus", ",".join(map(str, self.cpus)), "--gpus", ",".join(map(str, self.gpus))]
        if self.batch_sizes:
            cmd += ["--batch-sizes", ",".join(map(str, self.batch_sizes))]
        return cmd + ["--samples", str(self.samples), "--warmup", str(self.warmup), "--repeats",
                      str(self.repeats), "--seed", str(self.seed), "--wait-idle", f"{self.wait_idle:g}",
                      "--max-contention", f"{self.max_contention:g}", "--retries", str(self.retries),
                      "--out", str(out)]

    def parameters(self) -> dict[str, Any]:
        """What makes rows comparable; a resumed run must match these."""
        return {"samples": self.samples, "warmup": self.warmup, "seed": self.seed,
                "models": {m: asdict(model_config(m)) for m in self.models}}


def plan_jobs(req: ProfileRequest) -> list[Job]:
    """Every (model, batch size, cpus, gpus, repeat) to measure, in a stable order."""
    avail = _check_request(req)
    jobs = []
    for m in req.models:
        cfg = model_config(m)
        # With --batch-sizes every row names its batch size, so one file can hold several.
        sizes = [(b, f"{m}-b{b}") for b in req.batch_sizes] if req.batch_sizes else [(cfg.batch_size, m)]
        for batch, task in sizes:
            for g in req.gpus:
                for c in req.cpus:
                    for _ in range(req.repeats):
                        jobs.append(Job(task=task, model=m, batch_size=batch, cpus=c, gpus=g,
                                        samples=req.samples, warmup=req.warmup, seed=req.seed,
                                        cpu_ids=tuple(avail[:c])))
    return jobs


def _check_request(req: ProfileRequest) -> list[int]:
    """Refuse a request that cannot run here, before anything runs; return the usable CPU ids."""
    for m in req.models:
        model_config(m)  # unknown names fail before anything runs
    avail = usable_cpus()
    for c in req.cpus:
        if c < 1:
            raise ProfilerError(f"--cpus {c}: a measurement needs at least 1 CPU. Fix: use counts >= 1")
        if c > len(avail):
            raise ProfilerError(f"--cpus {c}: this process may use only {len(avail)} CPUs ({avail}). "
                                f"Fix: measure at most {len(avail)} CPUs here, or run on a larger machine")
    if any(g < 0 for g in req.gpus):
        raise ProfilerError("--gpus: counts must be >= 0 (0 = CPU only)")
    if any(b < 1 for b in req.batch_sizes):
        raise ProfilerError("--batch-sizes: batch sizes must be >= 1")
    if req.samples < 1 or req.warmup < 0 or req.repeats < 1:
        raise ProfilerError("need --samples >= 1, --warmup >= 0 and --repeats >= 1")
    if req.wait_idle < 0 or req.retries < 0 or not 0 <= req.max_contention <= 1:
        raise ProfilerError("need --wait-idle >= 0, --retries >= 0 and --max-contention in [0, 1]")
    return avail


def run_profile(req: ProfileRequest, out: str | Path, progress: bool = True,
                log: Log = lambda s: print(s, file=sys.stderr),
                argv: list[str] | None = None, measure_fn: MeasureFn = measure, force: bool = False,
                ) -> list[dict[str, Any]]:
    """Measure every planned job not yet in `out`, appending one CSV row per measurement.

    GPU counts > 0 are skipped with a message when CUDA (or that many devices) is absent.
    `out` and its sidecar must be new or written by an earlier run (which this one resumes);
    with `force`, files that are neither are replaced. Returns the rows written by this call.
    """
    out = Path(out)
    foreign = check_out(out, force)
    jobs = plan_jobs(req)  # before describe_machine (which imports torch): flag errors come at once
    for path in foreign:  # --force, and the request is good: start afresh
        log(f"--force: replacing {path}")
        path.unlink()
    machine = describe_machine()
    jobs, notes = _without_missing_gpus(jobs, machine, log)
    check_resume(out, req.parameters(), machine)
    _note_if_busy(req, log)
    todo = _not_yet_measured(jobs, existing_rows(out))
    skipped = len(jobs) - len(todo)
    if skipped:
        log(f"resuming {out}: {skipped} measurement(s) already there, {len(todo)} to go")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_sidecar(out, req.parameters(), machine, notes, argv)
    written: list[dict[str, Any]] = []
    bar = _progress_bar(len(jobs), skipped, progress)
    try:
        with RowAppender(out) as rows:
            for job in todo:
                bar.set_description(f"{job.task} cpus={job.cpus} gpus={job.gpus}")
                row = profile_row(job, _measure_undisturbed(job, req, measure_fn, log))
                rows.append(row)
                written.append(row)
                bar.update(1)
    except KeyboardInterrupt:
        # Every finished row is on disk already (RowAppender flushes each): say so, and how to go on.
        raise KeyboardInterrupt(f"kept {skipped + len(written)} of {len(jobs)} measurement(s) in {out}; rerun "
                                f"the same command to resume") from None
    finally:
        bar.close()
    return written


def _without_missing_gpus(jobs: list[Job], machine: dict[str, Any], log: Log) -> tuple[list[Job], list[str]]:
    """Drop the jobs that need more CUDA devices than the machine has, saying so (the notes go
    into the sidecar, so that the profile says why it has no rows with that many GPUs)."""
    notes: list[str] = []
    n_dev = len(machine["cuda_devices"])
    for g in sorted({j.gpus for j in jobs if j.gpus > 0}):
        if n_dev < g:
            why = ("CUDA is not available (torch " + machine["torch"] + ")") if n_dev == 0 else \
                f"only {n_dev} CUDA device(s) are visible"
            msg = f"skipping --gpus {g}: {why}; the profile has no rows with {g} GPUs"
            log(msg)
            notes.append(msg)
            jobs = [j for j in jobs if j.gpus != g]
    return jobs, notes


def _note_if_busy(req: ProfileRequest, log: Log) -> None:
    """Warn, before measuring, that a loaded machine makes measurements wait and repeat."""
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load1 > 0.5:
        # Measurements pinned to CPUs that other processes also run on come out slower (with
        # several threads, far slower: every parallel region waits for its slowest thread).
        log(f"note: the machine is busy (1-minute load average {load1:.2f} on {len(usable_cpus())} usable "
            f"CPUs): each measurement waits up to {req.wait_idle:g} s for idle CPUs and is repeated "
            f"up to {req.retries} time(s) when disturbed; see the contention column")


def _not_yet_measured(jobs: list[Job], done: dict[tuple[str, int, int], int]) -> list[Job]:
    """The jobs still to run, given how many rows each (task, cpus, gpus) already has."""
    todo: list[Job] = []
    seen = dict(done)
    for j in jobs:
        # Repeats of a key are identical jobs; skip as many as the file already has.
        if seen.get(j.key, 0) > 0:
            seen[j.key] -= 1
        else:
            todo.append(j)
    return todo


def _measure_undisturbed(job: Job, req: ProfileRequest, measure_fn: MeasureFn,
                         log: Log) -> dict[str, Any]:
    """Measure `job`, waiting for idle CPUs first and re-measuring while others disturb it."""
    best: dict[str, Any] | None = None
    for attempt in range(req.retries + 1):
        deadline = time.monotonic() + req.wait_idle
        while req.wait_idle > 0 and idle_share(job.cpu_ids) < 0.9 and time.monotonic() < deadline:
            time.sleep(1.0)
        res = measure_fn(job)
        shared = res.get("contention")
        if best is None or (shared is not None and shared < (best.get("contention") or 0.0)):
            best = res
        if shared is None or shared <= req.max_contention:
            break
        if attempt < req.retries:
            log(f"{job.task} on {job.cpus} CPU(s): other processes used {shared:.0%} of its CPUs; measuring again")
    return best


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, unit="run", disable=not enabled, file=sys.stderr,
                dynamic_ncols=True)


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    """'1,2,4' -> (1, 2, 4), with an error naming the flag."""
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ProfilerError(f"{what}: expected comma-separated integers such as 1,2,4, got {text!r}") from None
    if not values:
        raise ProfilerError(f"{what}: give at least one value")
    return values


def parse_models(text: str) -> tuple[str, ...]:
    """'cnn,lm-tiny' -> ('cnn', 'lm-tiny'), every name checked against the known models."""
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if not names:
        raise ProfilerError(f"--models: give at least one of {', '.join(model_names())}")
    for n in names:
        model_config(n)
    return names
