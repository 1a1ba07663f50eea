"""Collection over worker processes: `--envs E` episodes split into `--workers W` contiguous
shares, each share collected in lockstep by one process (`collect_lockstep`). W = 1 collects in
the training process itself, on the training device (the GPU run: one process, large batches).

Every episode's draws depend only on its job (seed, sample seed), so any split of the same jobs
gives the same episodes, in job order.

`backend="ray"`: the shares go to Ray actors instead (agents/learned/ray_workers.py), the same
episodes again.

Ctrl-C: the workers ignore SIGINT (the terminal sends it to the whole process group); the
training process gets the KeyboardInterrupt, terminates the pool (never waits on it) and
re-raises, so an interrupted run stops promptly and leaves no process behind.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from agents.learned.acting import ActingOptions
from agents.worker_signals import quiet_worker_signals
from agents.learned.collect import Episode, EpisodeJob, RewardSpec, collect_lockstep
from agents.learned.model import ModelConfig, TapFingerNet
from tapfinger.sim.scenario import Scenario


def _init_worker() -> None:
    quiet_worker_signals()  # the parent handles Ctrl-C and SIGTERM and terminates us
    torch.set_num_threads(1)  # the workers are the parallelism; BLAS threads would fight over cores
    os.environ["OMP_NUM_THREADS"] = "1"


def _collect_share(share: tuple) -> list[Episode]:
    scenario, cfg, state, acting, jobs, reward = share
    net = TapFingerNet(ModelConfig(**cfg))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    net.eval()
    return collect_lockstep(scenario, net, ActingOptions(**acting), jobs, reward)


def split(jobs: list, parts: int) -> list[list]:
    """Contiguous, as even as possible, no empty share."""
    parts = max(1, min(parts, len(jobs)))
    bounds = np.linspace(0, len(jobs), parts + 1).round().astype(int)
    return [jobs[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


class Collector:
    """Collects episode jobs with the current network, in `workers` processes (1 = in-process), or
    `workers` Ray actors with `backend="ray"` (at `ray_address`, or a Ray started here)."""

    def __init__(self, scenario: Scenario, acting: ActingOptions, workers: int, reward: RewardSpec,
                 device: torch.device, backend: str = "local", ray_address: str | None = None):
        self.scenario, self.acting, self.workers = scenario, acting, workers
        self.reward, self.device = reward, device
        self.pool = self.actors = None
        if backend == "ray" and workers > 1:  # lazily: Ray is optional (pip install '.[ray]')
            from agents.learned.ray_workers import RayCollector

            self.actors = RayCollector(scenario, acting, workers, reward, ray_address or None)
        elif workers > 1:
            import multiprocessing as mp

            self.pool = mp.get_context("fork").Pool(workers, initializer=_init_worker)

    def run(self, net: TapFingerNet, jobs: list[EpisodeJob]) -> list[Episode]:
        if self.actors is not None and len(jobs) > 1:
            return self.actors.run(net, jobs)
        if self.pool is None or len(jobs) == 1:
            was_training = net.training
            net.eval()
            try:
                return collect_lockstep(self.scenario, net, self.acting, jobs, self.reward, self.device)
            finally:
                net.train(was_training)
        from dataclasses import asdict

        # numpy, not torch tensors: torch would share tensors through file descriptors served by a
        # thread of this process, which prints a traceback when a worker dies mid-transfer (Ctrl-C)
        state = {k: v.detach().cpu().numpy() for k, v in net.state_dict().items()}
        shares = [(self.scenario, net.cfg.to_dict(), state, asdict(self.acting), share, self.reward)
                  for share in split(jobs, self.workers)]
        try:
            parts = self.pool.map(_collect_share, shares, chunksize=1)
        except BaseException:
            self.terminate()
            raise
        return [e for part in parts for e in part]

    def terminate(self) -> None:
        if self.actors is not None:
            self.actors.terminate()
            self.actors = None
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    def close(self) -> None:
        if self.actors is not None:
            self.actors.close()
            self.actors = None
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None
