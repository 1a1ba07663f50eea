"""Collecting experience: many episodes stepped in lockstep in one process, with one batched
forward pass per round for every deciding agent of every episode (`agents.learned.vector`).

Each episode runs through `envs.episode.EpisodeRun` (the one episode loop's stepwise form, so
its avg JCT and unfinished tasks are measured as `tapfinger evaluate` measures them) and each
round through `RoundPlanner.plan_steps` (the one acting loop): the driver here only gathers the
planners' score requests, serves them together, and plays the rounds. Sampled choices draw
their uniforms from each episode's own generator, so an episode does not depend on which other
episodes share its batch: batched and one-at-a-time collection give the same episodes.

The learning signal is the team reward: minus the tasks in the whole system at each slot end,
whose sum over an episode is exactly the tasks' total completion time (so maximising it is
minimising average JCT). The per-cluster rewards of the environment count a task visible to
several clusters several times, which is the paper's signal but not the metric. On deadline
scenarios `RewardSpec.miss_penalty` also charges each task that misses its deadline (declined, or
still unfinished when its deadline passes) as that many task-slots, once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from agents.learned.acting import ActingOptions, AgentDecision, RoundPlanner, RoundRecord, ScoreRequest, Step
from agents.learned.model import TapFingerNet
from envs.episode import EpisodeRun, RoundInfo, decide
from tapfinger.sim.faults import fault_scaled  # noqa: F401 (EpisodeJob.scenario_of; re-exported)
from tapfinger.sim.scenario import Scenario


@dataclass(frozen=True)
class RewardSpec:
    """The team reward of a slot end: -scale x (tasks in the system + miss_penalty x the tasks that
    missed their deadline at it). Rounds that do not end a slot earn 0."""

    scale: float = 0.05
    miss_penalty: float = 0.0

    def of(self, info: RoundInfo) -> float:
        return -(info.tasks_during + self.miss_penalty * info.missed) * self.scale if info.slot_ended else 0.0


@dataclass
class Episode:
    seed: int
    rounds: list[RoundRecord]
    round_reward: np.ndarray  # [rounds] team reward at the rounds that ended a slot, 0 elsewhere
    slot_ended: np.ndarray  # [rounds] bool
    avg_jct: float  # of the finished tasks, as `EpisodeResult.avg_jct` (nan when none finished)
    episodic_return: float
    unfinished: int = 0  # tasks not finished at the end (a truncated episode), never in avg_jct
    sample_seed: int = 0  # seed of the episode's action sampling
    missed: int = 0  # tasks that missed their deadline (declined ones included)
    declined: int = 0  # tasks declined (admission control), whoever declined them
    deadline_ratio: float = float("nan")  # as `EpisodeResult.deadline_ratio` (nan without deadlines)

    @property
    def num_rounds(self) -> int:
        return len(self.rounds)


@dataclass(frozen=True)
class EpisodeJob:
    """One episode to collect: arrivals from `seed`, action sampling from `sample_seed`.

    With `teacher` (a heuristic's registry name) the teacher's choices are recorded as single-step
    decisions; the teacher also acts, unless `learner_acts` (DAgger: the learner visits the states,
    the teacher labels them). `deterministic`: the network's greedy choices (evaluation)."""

    seed: int
    sample_seed: int = 0
    teacher: str = ""
    learner_acts: bool = False
    deterministic: bool = False
    rate: float = 0.0  # arrivals per slot of this episode (0 = the scenario's; a training load distribution)
    fault_scale: float = 1.0  # the scenario's fault rates times this (0 = no faults; a training fault distribution)

    def scenario_of(self, scenario: Scenario) -> Scenario:
        """The scenario this episode plays: `scenario` at the job's arrival rate, if it sets one, and
        at its fault scale (`fault_scaled`)."""
        scenario = fault_scaled(scenario, self.fault_scale)
        if not self.rate or scenario.arrivals.rate == self.rate:
            return scenario
        if scenario.arrivals.process != "poisson":
            raise ValueError(f"a training load ({self.rate:g} per slot) needs a Poisson scenario; "
                             f"{scenario.name} replays a trace. Fix: drop --rates")
        return scenario.with_overrides(arrivals=replace(scenario.arrivals, rate=float(self.rate)))


def teacher_record(obs: dict[str, np.ndarray], actions, scenario: Scenario,
                   planner: RoundPlanner | None = None) -> RoundRecord:
    """A teacher's round as labels: one decision per agent that could decide (as the learner's
    planner asks them). `planner`: the episode's planner, whose round arrays carry its greedy
    hints (and whose GreedyPolicy must see every round, teacher rounds included), and which says
    whether the learner may decline.

    A teacher's decline (`actions.decline`) is labelled as the decline choice when the learner
    has one (`RoundPlanner.decline`), and left out otherwise (the label is then the teacher's start,
    or "do nothing"). An agent that both starts and declines in one round (the engine allows it,
    the learner does one thing per round) is labelled with a two-step decision: the start, then the
    decline under the masks after the start, as a multi-task sequence would be.

    A label the learner's masks forbid is left out with its whole decision: a teacher may do what the
    learner cannot in one choice, e.g. start a task in room it made by shrinking a running task in
    the same round (elasticflow, edgeflow), and a forbidden label has a log-probability of about
    -1e9, which would swamp every other label's loss."""
    from agents.learned.acting import round_arrays
    from agents.learned.masks import MASK_KEYS, can_decide, decision_masks, update_masks
    from tapfinger.sim.tables import static_tables

    decline = planner is not None and planner.decline
    rec = RoundRecord(planner.round_arrays(obs) if planner is not None else round_arrays(obs, scenario))
    able = can_decide(obs, decline)
    declined = actions.decline if decline and actions.decline is not None else None
    for i in range(obs["task_mask"].shape[0]):
        if not able[i]:
            continue
        p = int(actions.task[i])
        dp = -1 if declined is None else int(declined[i])
        stacked = decision_masks(obs, np.array([i]), decline)
        masks = {k: stacked[k][0] for k in MASK_KEYS}
        steps = []
        if p >= 0 or dp < 0:  # the start, or "do nothing"
            steps.append(Step(masks, p, int(actions.node[i]), actions.alloc[i].astype(np.int64),
                              int(obs["window_id"][i, p]) if p >= 0 else -1, 1.0))
        if dp >= 0:
            if p >= 0:  # the decline after the start: masks as a sequence's next step
                static = static_tables(scenario)
                room = int(static.max_running[i] - (obs["running_id"][i] >= 0).sum()) - 1
                masks = update_masks(masks, obs["node_free"][i].copy(), p, int(actions.node[i]), actions.alloc[i],
                                     static.grid_max, obs["window_id"][i] >= 0, room)
            steps.append(Step(masks, dp, 0, np.zeros(obs["alloc_low"].shape[2], dtype=np.int64),
                              int(obs["window_id"][i, dp]), 1.0, decline=True))
        if all(_label_allowed(step) for step in steps):
            rec.decisions.append(AgentDecision(i, steps, 0.0))
    return rec


def _label_allowed(step: Step) -> bool:
    """Whether the learner's masks allow a labelled step: its task choice, node and amounts."""
    m = step.masks
    W = m["node_mask"].shape[0]
    if step.decline:
        return bool(m["task_mask"][W + 1 + step.place])
    if step.place < 0:
        return bool(m["task_mask"][0])
    return bool(m["task_mask"][step.place + 1] and m["node_mask"][step.place, step.node]
                and (m["alloc_low"][step.place] <= step.alloc).all() and (step.alloc <= m["alloc_high"][step.node]).all())


class _Env:
    """One episode of the lockstep: its run, planner, sampling generator and what it recorded."""

    def __init__(self, scenario: Scenario, job: EpisodeJob, acting: ActingOptions, reward: RewardSpec,
                 greedy_hint: bool = False, decline: bool = False, hint_policy: str = "greedy",
                 node_faults: bool = False):
        scenario = job.scenario_of(scenario)
        self.scenario, self.job, self.reward = scenario, job, reward
        self.missed = 0
        self.run = EpisodeRun(scenario, job.seed, name=job.teacher or "tapfinger")
        self.planner = RoundPlanner(scenario, acting, record_arrays=False, greedy_hint=greedy_hint, decline=decline,
                                    hint_policy=hint_policy, node_faults=node_faults)
        self.rng = np.random.default_rng(job.sample_seed)
        self.teacher = None
        if job.teacher:
            from agents.registry import make_policy

            self.teacher = make_policy(job.teacher, scenario, seed=job.seed)
            self.teacher.reset(job.seed)
        self.rounds: list[RoundRecord] = []
        self.rewards: list[float] = []
        self.ended: list[bool] = []
        self.steps = None  # the round's planning coroutine while it waits for choices
        self.labels = None

    def begin_round(self) -> ScoreRequest | None:
        """Start this round's planning; its first request, or None when the round needs no network."""
        obs = self.run.observe()
        if self.teacher is not None:
            self.labels = decide(self.teacher, self.run)  # a planning teacher (rollout) gets the present
            if not self.job.learner_acts:
                self._play(self.labels, teacher_record(obs, self.labels, self.scenario, self.planner))
                return None
        self.steps = self.planner.plan_steps(obs)
        return self._advance(None)

    def answer(self, choices) -> ScoreRequest | None:
        return self._advance(choices)

    def _advance(self, choices) -> ScoreRequest | None:
        try:
            return next(self.steps) if choices is None else self.steps.send(choices)
        except StopIteration as finished:
            actions, record = finished.value
            if self.teacher is not None:  # DAgger: the learner's actions, the teacher's labels
                record = teacher_record(self.run.observe(), self.labels, self.scenario, self.planner)
            self._play(actions, record)
            return None

    def _play(self, actions, record: RoundRecord) -> None:
        if record.arrays:  # what the critic sees of the round beyond the graph (see progress_features)
            record.arrays["progress_x"] = self.run.progress_features()[None, :]
        info: RoundInfo = self.run.play(actions)
        self.rounds.append(record)
        self.rewards.append(self.reward.of(info))
        self.missed += info.missed
        self.ended.append(info.slot_ended)

    def episode(self) -> Episode:
        result = self.run.result()
        rr = np.asarray(self.rewards, dtype=np.float64)
        return Episode(self.job.seed, self.rounds, rr, np.asarray(self.ended, dtype=bool), result.avg_jct,
                       float(rr.sum()), result.unfinished, self.job.sample_seed, self.missed, result.declined,
                       result.deadline_ratio)


@torch.no_grad()
def collect_lockstep(scenario: Scenario, net: TapFingerNet, acting: ActingOptions, jobs: list[EpisodeJob],
                     reward: RewardSpec = RewardSpec(), device: str | torch.device = "cpu") -> list[Episode]:
    """Play `jobs` together, one batched forward per round for all their deciding agents; episodes
    in the order of `jobs`."""
    from agents.learned.vector import LockstepScorer

    if len({job.deterministic for job in jobs}) > 1:
        raise ValueError("collect_lockstep plays all jobs sampled or all greedy; collect the others separately")
    deterministic = bool(jobs) and jobs[0].deterministic
    scorer = LockstepScorer(net, torch.device(device), acting.pointer)
    envs = [_Env(scenario, job, acting, reward, net.cfg.greedy_hint, net.cfg.decline, net.cfg.hint_policy,
                 net.cfg.node_faults) for job in jobs]
    active = list(envs)
    while active:
        waiting = [(env, req) for env in active if (req := env.begin_round()) is not None]
        if waiting:
            scorer.encode([req.arrays for _, req in waiting])
            pos = {id(env): k for k, (env, _) in enumerate(waiting)}  # the env's round in the batch
            while waiting:
                choices = scorer.score([(pos[id(env)], req, env.rng) for env, req in waiting], deterministic)
                waiting = [(env, nxt) for (env, _), c in zip(waiting, choices, strict=True)
                           if (nxt := env.answer(c)) is not None]
        active = [env for env in active if not env.run.done]
    return [env.episode() for env in envs]


def play_episode(scenario: Scenario, net: TapFingerNet, acting: ActingOptions, job: EpisodeJob,
                 reward: RewardSpec = RewardSpec(), device: str | torch.device = "cpu") -> Episode:
    """One episode alone (`collect_lockstep` of one job)."""
    return collect_lockstep(scenario, net, acting, [job], reward, device)[0]
