"""One measurement, in a fresh Python subprocess pinned to its CPUs.

The parent calls `measure(job)`, which starts

    python -m tapfinger.testbed.measurement --worker SPEC_JSON

Thread-pool sizes, CPU affinity and allocator state are process-wide in PyTorch and must not
leak from one measurement into the next, hence a process per measurement. The worker pins
itself to the job's CPUs (`os.sched_setaffinity`) *before* importing torch, so that OpenMP
sizes its pool to match, trains the model (`run_job`) and prints one JSON result line.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from tapfinger.testbed.errors import ProfilerError
from tapfinger.testbed.machine import contention, cpu_times, peak_rss_mb, usable_cpus
from tapfinger.testbed.models import build_model, model_config

WORKER_MODULE = "tapfinger.testbed.measurement"
RESULT_PREFIX = "TAPFINGER-PROFILE-RESULT "


@dataclass(frozen=True)
class Job:
    """One measurement: a model at a batch size on `cpus` CPUs and `gpus` GPUs."""

    task: str
    model: str
    batch_size: int
    cpus: int
    gpus: int
    samples: int
    warmup: int
    seed: int
    cpu_ids: tuple[int, ...] = ()

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.task, self.cpus, self.gpus)


def run_job(job: Job, spawn_time: float | None = None) -> dict[str, Any]:
    """Train `job.model` for `job.samples` samples after `job.warmup` untimed steps; time it.

    Call this in a fresh process that has already pinned itself (see `_worker_main`):
    torch's thread settings are process-wide.
    """
    import torch

    torch.set_num_threads(job.cpus)
    torch.manual_seed(job.seed)
    step, sync = _training_step(job)
    for i in range(job.warmup):
        step(i)
    sync()
    setup = time.time() - spawn_time if spawn_time is not None else float("nan")
    steps = max(1, math.ceil(job.samples / job.batch_size))
    total, times, losses, shared = _timed_steps(job, steps, step, sync)
    gpu_mem = (max(torch.cuda.max_memory_allocated(d) for d in range(job.gpus)) / 2**20
               if job.gpus > 0 else None)
    if not all(math.isfinite(x) for x in losses):
        raise ProfilerError(f"{job.model}: the loss became non-finite; the measurement is not valid")
    times.sort()
    return {
        "seconds": total,
        "step_seconds": times[len(times) // 2],  # median: robust to a stray slow step
        "steps": steps,
        "samples": steps * job.batch_size,
        "peak_mem_mb": peak_rss_mb(),
        "gpu_mem_mb": gpu_mem,
        "setup_seconds": setup,
        "contention": shared,
        "threads": torch.get_num_threads(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [],
    }


def _training_step(job: Job) -> tuple[Callable[[int], float], Callable[[], None]]:
    """(step(i) -> loss: one optimisation step on pre-made batch i, sync(): wait for the GPUs)."""
    import torch

    model, make_batch, loss_fn = build_model(model_config(job.model))
    device = torch.device("cuda:0" if job.gpus > 0 else "cpu")
    model = model.to(device)
    if job.gpus > 1:
        # Data parallel over the first `gpus` devices: the global batch is split among them,
        # so the amount of work per step is the same whatever the GPU count.
        model = torch.nn.DataParallel(model, device_ids=list(range(job.gpus)))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(job.seed)
    # A few pre-made batches, cycled: the measurement is of training, not of the random
    # number generator (a real task's data loader runs ahead in other workers).
    pool = [make_batch(job.batch_size, gen) for _ in range(4)]

    def step(i: int) -> float:
        batch = tuple(t.to(device, non_blocking=True) for t in pool[i % len(pool)])
        opt.zero_grad(set_to_none=True)
        value = loss_fn(model, batch)
        value.backward()
        opt.step()
        return float(value.detach())  # .item() also waits for the GPU to finish the step

    def sync() -> None:
        if job.gpus > 0:
            torch.cuda.synchronize()

    return step, sync


def _timed_steps(job: Job, steps: int, step: Callable[[int], float], sync: Callable[[], None],
                 ) -> tuple[float, list[float], list[float], float | None]:
    """(total seconds, per-step seconds, losses, contention) of `steps` timed steps."""
    times: list[float] = []
    losses: list[float] = []
    cpus_used = job.cpu_ids or tuple(usable_cpus())
    stat_before, own_before = cpu_times(cpus_used), time.process_time()
    t_start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        losses.append(step(i))
        times.append(time.perf_counter() - t0)
    sync()
    total = time.perf_counter() - t_start
    shared = contention(stat_before, cpu_times(cpus_used), time.process_time() - own_before,
                        len(cpus_used), total)
    return total, times, losses, shared


def _die_with_parent(parent: int | None) -> None:
    """Ask Linux to end this worker when the profiler dies (kill, not only Ctrl-C)."""
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        sys.exit(1)


def _worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    spawn_time = spec.pop("spawn_time", None)
    _die_with_parent(spec.pop("parent", None))
    job = Job(**{**spec, "cpu_ids": tuple(spec.get("cpu_ids", ()))})
    if job.cpu_ids and hasattr(os, "sched_setaffinity"):
        # Before importing torch, so that OpenMP and the intra-op pool see only these CPUs.
        os.sched_setaffinity(0, set(job.cpu_ids))
    result = run_job(job, spawn_time)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def thread_env(cpus: int) -> dict[str, str]:
    """Environment of a worker limited to `cpus` threads (read by OpenMP/MKL at torch import)."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(cpus)
    return env


def measure(job: Job, timeout: float | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh subprocess and return its result dict."""
    spec = {**asdict(job), "cpu_ids": list(job.cpu_ids), "spawn_time": time.time(), "parent": os.getpid()}
    cmd = [sys.executable, "-m", WORKER_MODULE, "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=thread_env(job.cpus), timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ProfilerError(f"measuring {job.task} on {job.cpus} CPUs / {job.gpus} GPUs took longer than "
                            f"{timeout:g} s. Fix: lower --samples, or use a smaller model size") from None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    raise ProfilerError(f"measuring {job.task} on {job.cpus} CPUs / {job.gpus} GPUs failed (exit code "
                        f"{proc.returncode}):\n{tail}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2]))
    print("usage: tapfinger profile ... (this module's own entry point is the measurement worker: "
          "--worker SPEC_JSON)", file=sys.stderr)
    sys.exit(2)
