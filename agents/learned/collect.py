"""Collecting experience: whole episodes played by the network (or by a teacher heuristic for
imitation), in worker processes or in-process.

The learning signal is the team reward: minus the tasks in the whole system at each slot end,
whose sum over an episode is exactly the tasks' total completion time (so maximising it is
minimising average JCT). The per-cluster rewards of the environment count a task visible to
several clusters several times, which is the paper's signal but not the metric.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from agents.learned.model import ModelConfig, TapFingerNet
from agents.learned.acting import ActingOptions
from agents.learned.policy import AgentDecision, Planner, RoundRecord, Step
from envs.observations import build_observations
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import Scenario


@dataclass
class Episode:
    seed: int
    rounds: list[RoundRecord]
    round_reward: np.ndarray  # [rounds] team reward at the rounds that ended a slot, 0 elsewhere
    slot_ended: np.ndarray  # [rounds] bool
    avg_jct: float
    episodic_return: float

    @property
    def num_rounds(self) -> int:
        return len(self.rounds)


def play_episode(scenario: Scenario, planner: Planner, seed: int, generator: torch.Generator,
                 deterministic: bool = False, reward_scale: float = 0.05, teacher=None,
                 learner_acts: bool = False) -> Episode:
    """One episode. With `teacher` (a heuristic Policy), the teacher's choices are recorded as
    single-step decisions (for imitation); the teacher also acts, unless `learner_acts` (DAgger:
    the learner visits the states, the teacher labels them). Without a teacher the planner acts
    and records its own decisions (for PPO)."""
    eng = Engine(scenario)
    eng.reset(seed)
    planner.reset()
    if teacher is not None:
        teacher.reset(seed)
    rounds, rewards, ended = [], [], []
    while not eng.done:
        obs = build_observations(eng)
        if teacher is None:
            actions, record = planner.act(obs, deterministic=deterministic, generator=generator)
        else:
            labels = teacher.act(obs)
            record = teacher_record(obs, labels, scenario)
            actions = planner.act(obs, deterministic=deterministic, generator=generator)[0] if learner_acts \
                else labels
        in_system = int(((eng.status == 1) | (eng.status == 2)).sum())
        slot_end = eng.play_round(actions.task, actions.node, actions.alloc, actions.realloc)
        rounds.append(record)
        rewards.append(-in_system * reward_scale if slot_end else 0.0)
        ended.append(slot_end)
    jct = eng.task_records()["jct"]
    rr = np.asarray(rewards)
    return Episode(seed, rounds, rr, np.asarray(ended), float(jct.mean()), float(rr.sum()))


def teacher_record(obs: dict[str, np.ndarray], actions, scenario: Scenario) -> RoundRecord:
    from agents.learned.batch import round_arrays
    from agents.learned.masks import MASK_KEYS

    rec = RoundRecord(round_arrays(obs, scenario))
    for i in range(obs["task_mask"].shape[0]):
        if not obs["task_mask"][i, 1:].any():
            continue
        p = int(actions.task[i])
        masks = {k: obs[k][i] for k in MASK_KEYS}
        step = Step(masks, p, int(actions.node[i]), actions.alloc[i].astype(np.int64),
                    int(obs["window_id"][i, p]) if p >= 0 else -1, 1.0)
        rec.decisions.append(AgentDecision(i, [step], 0.0))
    return rec


# ---------------------------------------------------------------------------------------------
# worker processes


def _init_worker() -> None:
    torch.set_num_threads(1)  # the workers are the parallelism; BLAS threads would fight over cores
    os.environ["OMP_NUM_THREADS"] = "1"


def collect_job(job: tuple) -> Episode:
    """(scenario, model config dict, state dict, acting dict, seed, sample seed, reward scale, teacher,
    learner_acts)."""
    scenario, cfg, state, acting, seed, sample_seed, reward_scale, teacher_name, learner_acts = job
    torch.set_num_threads(1)
    net = TapFingerNet(ModelConfig(**cfg))
    net.load_state_dict(state)
    net.eval()
    planner = Planner(net, scenario, ActingOptions(**acting))
    g = torch.Generator()
    g.manual_seed(int(sample_seed))
    teacher = None
    if teacher_name:
        from agents.registry import make_policy

        teacher = make_policy(teacher_name, scenario, seed=seed)
    return play_episode(scenario, planner, seed, g, reward_scale=reward_scale, teacher=teacher,
                        learner_acts=learner_acts)


class Collector:
    """Runs episode jobs in a pool of worker processes (or in-process with one env)."""

    def __init__(self, workers: int):
        self.workers = workers
        self.pool = None
        if workers > 1:
            import multiprocessing as mp

            self.pool = mp.get_context("fork").Pool(workers, initializer=_init_worker)

    def run(self, jobs: list[tuple]) -> list[Episode]:
        if self.pool is None:
            return [collect_job(j) for j in jobs]
        return self.pool.map(collect_job, jobs, chunksize=1)  # map keeps job order: deterministic

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()
            self.pool = None
