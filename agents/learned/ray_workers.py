"""Training's rollout workers as Ray actors (`tapfinger train --backend ray`): the pattern of
Decima's parallel agents, on one machine or a Ray cluster.

Each actor holds what does not change during a run (the scenario, the acting options, the reward
and a network of the run's shape) and is sent, every iteration, only the current weights (put in
Ray's object store once, read by every actor) and its share of the episode jobs (seeds and sample
seeds). It collects that share in lockstep (`collect_lockstep`) and sends the episodes back; the
update stays on the driver (`--device cuda` there). The shares are the local collector's
(`workers.split`), and every episode's draws depend only on its job, so the episodes are those of
the local backend, in job order, and exact resume holds whichever backend collected.

An actor whose process dies is restarted and its share re-collected by Ray (`MAX_RESTARTS`; a
share is deterministic, so the retry gives the same episodes); one that keeps dying is reported
with the iteration's seeds, never dropped. Ctrl-C: the driver kills the actors (`terminate`) and
re-raises, so no actor is left collecting.
"""

from __future__ import annotations

import contextlib

import numpy as np

from agents.learned.acting import ActingOptions
from agents.learned.collect import Episode, EpisodeJob, RewardSpec
from agents.ray_session import RayBackendError, ray_session

MAX_RESTARTS = 2  # restarts of an actor whose process died, each retrying its share


class _RolloutWorker:
    """One Ray actor: a network of the run's shape and the collection settings, kept between
    iterations (built once, not once per iteration)."""

    def __init__(self, scenario, model_cfg: dict, acting: dict, reward: RewardSpec):
        import os

        import torch

        from agents.learned.model import ModelConfig, TapFingerNet

        torch.set_num_threads(1)  # the actors are the parallelism; BLAS threads would fight over cores
        os.environ["OMP_NUM_THREADS"] = "1"
        self.scenario, self.acting, self.reward = scenario, ActingOptions(**acting), reward
        self.net = TapFingerNet(ModelConfig(**model_cfg)).eval()

    def collect(self, state: dict[str, np.ndarray], jobs: list[EpisodeJob]) -> list[Episode]:
        import torch

        from agents.learned.collect import collect_lockstep

        self.net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        return collect_lockstep(self.scenario, self.net, self.acting, jobs, self.reward)


class RayCollector:
    """The Collector's `run`/`terminate`/`close` with `workers` Ray actors (started on first use,
    when the network's shape is known)."""

    def __init__(self, scenario, acting: ActingOptions, workers: int, reward: RewardSpec,
                 address: str | None = None):
        self.scenario, self.acting, self.workers, self.reward = scenario, acting, workers, reward
        self._session = contextlib.ExitStack()
        self.ray = self._session.enter_context(ray_session(address, workers))
        self.actors: list = []

    def _start(self, model_cfg: dict) -> None:
        from dataclasses import asdict

        ray = self.ray
        actor = ray.remote(num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(_RolloutWorker)
        # The scenario by value, not an object-store reference: a restarted actor must find its
        # constructor's arguments again, which a reference gone out of scope would not give.
        self.actors = [actor.remote(self.scenario, model_cfg, asdict(self.acting), self.reward)
                       for _ in range(self.workers)]

    def run(self, net, jobs: list[EpisodeJob]) -> list[Episode]:
        from agents.learned.workers import split

        if not self.actors:
            self._start(net.cfg.to_dict())
        ray = self.ray
        # numpy arrays: what the local pool sends too (see workers.Collector.run), put once for all actors
        state = ray.put({k: v.detach().cpu().numpy() for k, v in net.state_dict().items()})
        shares = split(jobs, self.workers)
        refs = [a.collect.remote(state, share) for a, share in zip(self.actors, shares, strict=False)]
        try:
            parts = ray.get(refs)
        except ray.exceptions.RayTaskError:
            raise  # collection itself failed, as it would locally: its own error
        except ray.exceptions.RayError as exc:  # an actor died more often than it may be restarted
            seeds = sorted({j.seed for j in jobs})
            raise RayBackendError(
                f"a Ray rollout worker died {MAX_RESTARTS + 1} times collecting the episodes of seeds "
                f"{seeds[0]}..{seeds[-1]} ({type(exc).__name__}); nothing of this iteration was used. Fix: look "
                f"at its log (ray logs, or /tmp/ray/session_latest/logs; often memory: fewer --workers per "
                f"node), then continue with the same command plus --resume") from None
        return [e for part in parts for e in part]

    def terminate(self) -> None:
        """Kill the actors now (Ctrl-C, an error) and leave Ray."""
        for a in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(a)
        self.actors = []
        self._session.close()

    def close(self) -> None:
        self.terminate()  # actors hold no results between iterations: nothing to wait for
