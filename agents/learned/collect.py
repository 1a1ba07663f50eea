"""Collecting experience: whole episodes played by the network (or by a teacher heuristic for
imitation), in worker processes or in-process, through the one episode loop
(`envs.episode.run_episode`), so that an episode's avg JCT and unfinished tasks are measured as
`tapfinger evaluate` measures them.

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
from envs.actions import RoundActions
from envs.episode import RoundInfo, run_episode
from tapfinger.sim.scenario import Scenario


@dataclass
class Episode:
    seed: int
    rounds: list[RoundRecord]
    round_reward: np.ndarray  # [rounds] team reward at the rounds that ended a slot, 0 elsewhere
    slot_ended: np.ndarray  # [rounds] bool
    avg_jct: float  # of the finished tasks, as `EpisodeResult.avg_jct` (nan when none finished)
    episodic_return: float
    unfinished: int = 0  # tasks not finished at the end (a truncated episode), never in avg_jct

    @property
    def num_rounds(self) -> int:
        return len(self.rounds)


class RecordingActor:
    """What `run_episode` drives during collection: the planner acts (or the teacher, for
    imitation) and the round's `RoundRecord` is kept for `on_round` to collect.

    With `teacher` (a heuristic Policy), the teacher's choices are recorded as single-step
    decisions; the teacher also acts, unless `learner_acts` (DAgger: the learner visits the states,
    the teacher labels them). Without a teacher the planner records its own decisions (for PPO)."""

    def __init__(self, scenario: Scenario, planner: Planner, generator: torch.Generator,
                 deterministic: bool = False, teacher=None, learner_acts: bool = False):
        self.scenario = scenario
        self.planner = planner
        self.generator = generator
        self.deterministic = deterministic
        self.teacher = teacher
        self.learner_acts = learner_acts
        self.name = getattr(teacher, "name", "tapfinger")
        self.last: RoundRecord | None = None

    def reset(self, seed: int) -> None:
        self.planner.reset()
        if self.teacher is not None:
            self.teacher.reset(seed)

    def _plan(self, obs: dict[str, np.ndarray]) -> tuple[RoundActions, RoundRecord]:
        return self.planner.act(obs, deterministic=self.deterministic, generator=self.generator)

    def act(self, obs: dict[str, np.ndarray]) -> RoundActions:
        if self.teacher is None:
            actions, self.last = self._plan(obs)
            return actions
        labels = self.teacher.act(obs)
        self.last = teacher_record(obs, labels, self.scenario)
        return self._plan(obs)[0] if self.learner_acts else labels


def play_episode(scenario: Scenario, planner: Planner, seed: int, generator: torch.Generator,
                 deterministic: bool = False, reward_scale: float = 0.05, teacher=None,
                 learner_acts: bool = False) -> Episode:
    """One episode through the one episode loop (`envs.episode.run_episode`), recording each round
    (see `RecordingActor` for the roles of `teacher` and `learner_acts`)."""
    actor = RecordingActor(scenario, planner, generator, deterministic, teacher, learner_acts)
    rounds, rewards, ended = [], [], []

    def on_round(info: RoundInfo) -> None:
        rounds.append(actor.last)
        rewards.append(-info.tasks_during * reward_scale if info.slot_ended else 0.0)
        ended.append(info.slot_ended)

    result = run_episode(scenario, actor, seed, on_round=on_round)
    rr = np.asarray(rewards)
    return Episode(seed, rounds, rr, np.asarray(ended, dtype=bool), result.avg_jct, float(rr.sum()),
                   result.unfinished)


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
