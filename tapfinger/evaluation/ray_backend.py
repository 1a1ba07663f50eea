"""Evaluation jobs as Ray tasks (`--backend ray`): the same episodes as the local process pool, on
this machine or on a Ray cluster (`--ray-address`, docs/scale-out.md).

Each job is the harness's own `_run_job_caught` run in a Ray worker, so an episode depends on its
(scenario, policy, seed, options) exactly as it does locally: results are identical per seed
(common random numbers), whatever ran where. The scenario is put in Ray's object store once and
shared by all its jobs; a job sends only the policy name, the seed and the options. Ray's worker
processes live on between tasks, so a policy is built once per worker (the harness's policy cache).

At most `workers` tasks are in flight: results come back one by one, in the order they finish,
and the harness saves each (its episode cache) before the next is awaited, so Ctrl-C or a lost
job loses no finished episode. A task whose worker process dies is retried by Ray (`MAX_RETRIES`);
one that still fails is reported with its policy and seed, never dropped.

This module never imports Ray at import time: the harness imports it for every evaluation, and a
heuristic evaluation must not load Ray (or torch). Connecting to Ray (`agents/ray_session.py`) is
shared with training's Ray rollout workers, which sit a layer below.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

from agents.ray_session import RayBackendError, import_ray, ray_session  # noqa: F401 (import_ray: the CLI's)

MAX_RETRIES = 3  # re-runs of a task whose worker process died (Ray's max_retries)


def _remote_job(fn: Callable, scenario, name: str, seed: int, options: dict):
    # The scenario arrives resolved from the object store: a job is the harness's job tuple again.
    return fn((scenario, name, seed, options))


def _lost(exc: BaseException, job: tuple, retries: int) -> RayBackendError:
    _, name, seed, _ = job
    return RayBackendError(
        f"the episode of policy {name!r}, seed {seed} was lost: its Ray worker died {retries + 1} times "
        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Finished episodes are kept "
        f"in the episode cache. Fix: look at the worker's log (ray logs, or /tmp/ray/session_latest/logs) for "
        f"why it died (often memory: fewer --workers per node), then rerun the same command")


def run_jobs_ray(jobs: list[tuple], workers: int, on_result: Callable, address: str | None = None,
                 job_fn: Callable | None = None, max_retries: int = MAX_RETRIES) -> None:
    """Run the harness's `jobs` as Ray tasks, at most `workers` at a time, calling
    `on_result(index, result, warnings)` here as each finishes (the harness's `_run_jobs`
    contract). `job_fn` is what a task runs on a job (default: the harness's episode)."""
    if job_fn is None:
        from tapfinger.evaluation.harness import _run_job_caught as job_fn
    with ray_session(address, max(1, min(workers, len(jobs)))) as ray:
        task = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=False)(_remote_job)
        shared: dict[int, object] = {}  # id(scenario) -> its object ref: put once, not once per job
        pending: dict = {}  # object ref -> job index
        queue = iter(range(len(jobs)))
        try:
            while True:
                while len(pending) < max(1, workers) and (i := next(queue, None)) is not None:
                    scenario, name, seed, options = jobs[i]
                    if id(scenario) not in shared:
                        shared[id(scenario)] = ray.put(scenario)
                    pending[task.remote(job_fn, shared[id(scenario)], name, seed, options)] = i
                if not pending:
                    return
                [ref], _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(ref)
                try:
                    out, said = ray.get(ref)
                except ray.exceptions.RayTaskError:
                    raise  # the job itself failed (as it would locally): its own error, traceback included
                except ray.exceptions.RayError as exc:  # the worker or its node died, retries spent
                    raise _lost(exc, jobs[i], max_retries) from None
                on_result(i, out, said)
        finally:
            _cancel(ray, pending)


def _cancel(ray, pending: dict) -> None:
    """Stop the tasks still running (Ctrl-C, an error): none is left to run on after we return."""
    for ref in pending:
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ray.cancel(ref, force=True)


def backend_runner(backend: str, address: str | None) -> Callable:
    """The harness's job runner for `backend` other than local: (jobs, workers, on_result) -> None."""
    if backend != "ray":
        raise ValueError(f"backend {backend!r} is not known. Fix: use --backend local or --backend ray")
    return lambda jobs, workers, on_result: run_jobs_ray(jobs, workers, on_result, address)
