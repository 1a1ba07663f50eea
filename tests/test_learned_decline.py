"""The learned policy's decline action (issue 14, item 8): the task choice widens to 2W+1 (start or
decline each window place), masked by the observation's decline_mask; a sampled decline reaches a
strict engine as a RoundActions decline; PPO rescores declines exactly (ratio 1), imitation learns a
teacher's declines; `--decline` reaches the checkpoint; a declining network exports, and its
programs choose the eager actions; older checkpoints load and play as before; --init-from adds the
decline head to a policy trained without it."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.learned.acting import ActingOptions, Choices, RoundPlanner
from agents.learned.advantages import ValueNorm, attach_values, build_samples
from agents.learned.collect import EpisodeJob, collect_lockstep, teacher_record
from agents.learned.config import PPOConfig
from agents.learned.model import DECLINE_INIT, NEG, ModelConfig, TapFingerNet
from agents.learned.policy import Planner
from agents.learned.ppo import evaluate_samples, imitation_update, ppo_update
from envs.actions import RoundActions
from envs.episode import EpisodeRun
from envs.observations import build_observations
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import Deadlines, load_scenario

REPO = Path(__file__).resolve().parent.parent
CPU = torch.device("cpu")
MULTI = ActingOptions(multi_task=True, max_sequence=3)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def decline_scenario(tasks: int = 30):
    """synthetic-3, shortened, with deadlines (ElasticFlow's rule) and declining allowed."""
    sc = load_scenario("synthetic-3")
    return dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=tasks), allow_decline=True,
                               deadlines=Deadlines("elasticflow"))


def decline_net(sc, seed: int = 0, bias: float | None = -1.0, hidden: int = 16, **kw) -> TapFingerNet:
    """A small declining network; `bias` replaces the decline head's starting bias (DECLINE_INIT
    would make declines too rare for a short test to see many)."""
    torch.manual_seed(seed)
    net = TapFingerNet(ModelConfig.for_scenario(sc, hidden=hidden, layers=1, decline=True, **kw))
    if bias is not None:
        with torch.no_grad():
            net.decline_head[-1].bias.fill_(bias)
    return net.eval()


class Recorder:
    """A scorer that does nothing and keeps every request's agents and masks."""

    def __init__(self):
        self.requests = []

    def for_round(self, arrays):
        return self

    def score(self, agents, masks):
        self.requests.append((agents.copy(), {k: v.copy() for k, v in masks.items()}))
        S, R = len(agents), masks["alloc_low"].shape[2]
        return Choices(np.full(S, -1), np.zeros(S, dtype=np.int64), np.zeros((S, R), dtype=np.int64), np.ones(S))


def full_window_obs(sc, seed: int = 1):
    """Observations of a strict engine, started tasks filling its clusters, at the first round in
    which one agent can start nothing but has tasks it may decline, and another can start one."""
    eng = Engine(sc, strict=True)
    eng.reset(seed)
    for _ in range(2000):
        obs = build_observations(eng)
        start = obs["task_mask"][:, 1:].any(axis=1)
        if (~start & obs["decline_mask"][:, 1:].any(axis=1)).any() and start.any():
            return eng, obs
        a = RoundActions.nothing(sc.num_clusters, sc.num_resources)
        taken = set()
        for i in range(sc.num_clusters):  # the first startable task each, at its minimum, at most
            for p in np.flatnonzero(obs["task_mask"][i, 1:]):
                if int(obs["window_id"][i, p]) not in taken:
                    a.task[i], a.node[i] = p, int(np.flatnonzero(obs["node_mask"][i, p])[0])
                    a.alloc[i] = obs["alloc_low"][i, p]
                    taken.add(int(obs["window_id"][i, p]))
                    break
        a.play(eng)
    raise AssertionError("no round with an agent that may only decline")


# --------------------------------------------------------------------------- masks
def test_the_decision_masks_append_the_decline_mask_and_only_with_the_option():
    sc = decline_scenario(60)
    _, obs = full_window_obs(sc)
    W = sc.window_size
    with_decline, without = Recorder(), Recorder()
    RoundPlanner(sc, decline=True).plan_round(obs, with_decline)
    RoundPlanner(sc).plan_round(obs, without)
    (agents, m), = with_decline.requests
    (agents0, m0), = without.requests
    assert m["task_mask"].shape == (len(agents), 2 * W + 1) and m0["task_mask"].shape == (len(agents0), W + 1)
    # starts as the observation's (the liveness rule aside), declines as its decline_mask
    np.testing.assert_array_equal(m["task_mask"][:, 1:W + 1], obs["task_mask"][agents, 1:])
    np.testing.assert_array_equal(m["task_mask"][:, W + 1:], obs["decline_mask"][agents, 1:])
    # agents that can start nothing but may decline decide too; without the option they do not
    only_decline = [i for i in range(sc.num_clusters)
                    if not obs["task_mask"][i, 1:].any() and obs["decline_mask"][i, 1:].any()]
    assert only_decline and set(only_decline) <= set(agents.tolist())
    assert not set(only_decline) & set(agents0.tolist())
    # liveness: "do nothing" is barred exactly for idle clusters with a startable task
    idle = ~(obs["running_id"][agents] >= 0).any(axis=1) & obs["task_mask"][agents, 1:].any(axis=1)
    np.testing.assert_array_equal(m["task_mask"][:, 0], (~idle).astype(m["task_mask"].dtype))

    # the network gives masked decline choices no probability
    net = decline_net(sc, bias=5.0)  # declines preferred wherever allowed
    actions, record = Planner(net, sc).act(obs, rng=np.random.default_rng(0))
    for d in record.decisions:
        tm = d.steps[0].masks["task_mask"]
        st = d.steps[0]
        assert st.place < 0 or tm[st.place + 1 + (W if st.decline else 0)] == 1


def test_a_policy_that_declines_is_refused_on_a_scenario_without_declines():
    sc = load_scenario("synthetic-3")
    with pytest.raises(ValueError, match="allow_decline = false"):
        RoundPlanner(sc, decline=True)
    with pytest.raises(ValueError, match="allow_decline = false"):
        Planner(decline_net(decline_scenario()), sc)


def test_task_logits_widen_only_with_the_option_and_the_pointer_ablation_stays_uniform():
    from agents.learned.acting import round_arrays
    from agents.learned.actor import decide
    from agents.learned.batch import collate
    from agents.learned.masks import decision_masks

    sc = decline_scenario(60)
    _, obs = full_window_obs(sc)
    W = sc.window_size
    rows = np.arange(sc.num_clusters)
    batch = collate([round_arrays(obs, sc)])
    for declining in (True, False):
        torch.manual_seed(0)
        net = TapFingerNet(ModelConfig.for_scenario(sc, hidden=16, layers=1, decline=declining)).eval()
        assert (net.decline_head is not None) is declining
        m = {k: torch.as_tensor(v) for k, v in decision_masks(obs, rows, declining).items()}
        m["task_mask"], m["node_mask"] = m["task_mask"].bool(), m["node_mask"].bool()
        with torch.no_grad():
            h = net.encode(batch)
            logits = net.task_logits(h, batch, torch.as_tensor(rows), m["task_mask"])
            uniform = decide(net, h, batch, torch.as_tensor(rows), m, uniforms=torch.full((len(rows), 4), 0.5),
                             pointer=False)
        assert logits.shape == (len(rows), 2 * W + 1 if declining else W + 1)
        assert ((logits <= NEG / 2) == ~m["task_mask"]).all()
        allowed = m["task_mask"].float()
        torch.testing.assert_close(uniform.task_probs, allowed / allowed.sum(dim=1, keepdim=True))
        if declining:  # the starting bias: declining is far less likely than starting or passing
            live = logits[:, W + 1:][m["task_mask"][:, W + 1:]]
            assert live.numel() and (live < DECLINE_INIT + 2).all()


def test_greedy_hints_put_nothing_on_the_decline_choices():
    from agents.learned.batch import collate
    from agents.learned.masks import decision_masks

    sc = decline_scenario(60)
    _, obs = full_window_obs(sc)
    W = sc.window_size
    planner = RoundPlanner(sc, greedy_hint=True, decline=True)
    batch = collate([planner.round_arrays(obs)])
    rows = torch.arange(sc.num_clusters)
    net = decline_net(sc, greedy_hint=True)
    m = torch.as_tensor(decision_masks(obs, rows.numpy(), True)["task_mask"]).bool()
    with torch.no_grad():
        h = net.encode(batch)
        hinted = net.task_logits(h, batch, rows, m)
        net.hint_weight.zero_()
        plain = net.task_logits(h, batch, rows, m)
    torch.testing.assert_close(hinted[:, W + 1:], plain[:, W + 1:], rtol=0, atol=0)
    assert (hinted[:, :W + 1] != plain[:, :W + 1]).any()  # greedy's proposals moved the task choices


# --------------------------------------------------------------------------- acting
def test_sampled_declines_are_played_by_a_strict_engine_and_recorded():
    sc = decline_scenario(40)
    net = decline_net(sc)
    planner = Planner(net, sc)
    rng = np.random.default_rng(3)
    run = EpisodeRun(sc, 5, engine=Engine(sc, strict=True))  # an invalid decline would raise
    played = 0
    while not run.done:
        obs = run.observe()
        actions, record = planner.act(obs, rng=rng)
        if actions.decline is not None:
            for i in np.flatnonzero(actions.decline >= 0):
                assert obs["decline_mask"][i, actions.decline[i] + 1] == 1 and actions.task[i] == -1
                step = next(d.steps[0] for d in record.decisions if d.agent == i)
                assert step.decline and step.logp_rest == 0.0 and step.task_id == obs["window_id"][i, step.place]
            played += int((actions.decline >= 0).sum())
        run.play(actions)
    result = run.result()
    assert played > 0 and result.declined == played  # every decline played was a decline of the engine
    assert result.unfinished == 0 and int(result.finished.sum()) + result.declined == sc.arrivals.tasks


def test_a_decline_ends_a_multi_task_sequence_and_claims_its_task_in_conflicts():
    sc = decline_scenario(40)
    net = decline_net(sc, bias=0.5)
    episodes = collect_lockstep(sc, net, MULTI, [EpisodeJob(3, 11), EpisodeJob(4, 12)])
    decisions = [d for e in episodes for r in e.rounds for d in r.decisions]
    with_decline = [d for d in decisions if any(st.decline for st in d.steps)]
    assert with_decline
    assert all(d.steps[-1].decline and not any(st.decline for st in d.steps[:-1]) for d in with_decline)
    assert any(len(d.steps) > 1 for d in with_decline)  # a decline after starts in one sequence
    for d in with_decline:  # a task started earlier in the sequence is not declinable at the decline
        for before in d.steps[:-1]:
            assert d.steps[-1].masks["task_mask"][sc.window_size + 1 + before.place] == 0

def test_a_decline_claims_its_task_in_conflict_resolution_like_a_start():
    """A start and a decline of one task by two agents: the conflict rule over task ids keeps one
    (here by picking probability alone, bayes=False, so that the expected winner is plain)."""
    from agents.learned.acting import Step

    sc = decline_scenario(40)
    W = sc.window_size
    eng = Engine(sc, strict=True)
    eng.reset(1)
    for _ in range(50):
        obs = build_observations(eng)
        shared = [(i, j, p, q) for i in range(3) for j in range(i + 1, 3) for p in range(W) for q in range(W)
                  if obs["window_id"][i, p] >= 0 and obs["window_id"][i, p] == obs["window_id"][j, q]
                  and obs["task_mask"][i, p + 1]]
        if shared:
            break
        RoundActions.nothing(3, sc.num_resources).play(eng)  # the slot ends: more arrivals
    i, j, p, q = shared[0]
    tid = int(obs["window_id"][i, p])
    node = int(np.flatnonzero(obs["node_mask"][i, p])[0])
    for p_start, p_decline in ((0.2, 0.9), (0.9, 0.2)):
        planner = RoundPlanner(sc, ActingOptions(bayes=False), decline=True)
        planner.slot = int(obs["slot"][0, 0])
        planner.queue[i] = [Step({}, p, node, obs["alloc_low"][i, p].copy(), tid, prob=p_start)]
        planner.queue[j] = [Step({}, q, 0, np.zeros(sc.num_resources, dtype=np.int64), tid, prob=p_decline,
                                 decline=True)]
        actions, _ = planner.plan_round(obs, Recorder())
        declined = actions.decline is not None and actions.decline[j] == q
        assert declined == (p_decline > p_start) and (actions.task[i] == p) == (p_start > p_decline)
        assert (actions.decline is None or actions.decline[i] == -1) and actions.task[j] == -1
    actions.play(eng)  # the strict engine takes the winner's start


# --------------------------------------------------------------------------- PPO and imitation
@pytest.fixture(scope="module")
def collected(one_torch_thread):
    """Sampled episodes of a declining network, single- and multi-task, with their PPO samples."""
    sc = decline_scenario(40)
    net = decline_net(sc)
    out = {}
    for name, acting in (("single", ActingOptions()), ("multi", MULTI)):
        episodes = collect_lockstep(sc, net, acting, [EpisodeJob(3, 11), EpisodeJob(4, 12)])
        attach_values(net, episodes, ValueNorm(enabled=False), CPU)
        out[name] = (episodes, build_samples(episodes, 0.95, 0.9))
    return sc, net, out


@pytest.mark.parametrize("mode", ["single", "multi"])
def test_the_update_recomputes_the_collected_log_probabilities_with_declines(collected, mode):
    """ratio == 1 before any gradient step, with declines (some of them lost conflicts, some after
    starts in a sequence) in the batch; a decline's log-probability is its task choice alone."""
    sc, net, out = collected
    episodes, samples = out[mode]
    declines = [s for s in samples if any(st.decline for st in s.steps)]
    assert declines and any(s.lost and s.steps[0].decline for s in samples)
    with torch.no_grad():
        logp, _, _ = evaluate_samples(net, samples, episodes, CPU)
    old = torch.tensor([s.old_logp for s in samples], dtype=logp.dtype)
    torch.testing.assert_close(logp, old, atol=1e-5, rtol=0)
    # the node and allocation heads are skipped exactly: other recorded amounts change nothing
    moved = [dataclasses.replace(s, steps=[dataclasses.replace(st, node=st.node if not st.decline else 0,
                                                               alloc=st.alloc + 3 * st.decline) for st in s.steps])
             for s in declines]
    with torch.no_grad():
        a, _, _ = evaluate_samples(net, declines, episodes, CPU)
        b, _, _ = evaluate_samples(net, moved, episodes, CPU)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    # scored as starts of the same places, they would have other probabilities
    as_starts = [dataclasses.replace(s, steps=[dataclasses.replace(st, decline=False) for st in s.steps])
                 for s in declines]
    with torch.no_grad():
        c, _, _ = evaluate_samples(net, as_starts, episodes, CPU)
    assert (c - a).abs().max() > 1e-3
    if mode == "single":  # one PPO step: ratio 1 then, and the weights move
        net = copy.deepcopy(net)
        cfg = PPOConfig(epochs=1, minibatch_rounds=10_000, target_kl=0.0)
        stats = ppo_update(net, torch.optim.Adam(net.parameters(), lr=1e-3), samples, episodes, cfg,
                           np.random.default_rng(0), CPU)
        assert abs(stats["approx_kl"]) < 1e-8 and stats["clipfrac"] == 0.0 and np.isfinite(stats["policy_loss"])


class Decliner:
    """A teacher whose agent 0 declines the tasks of type 0 it sees (one agent only, so that no
    two agents decline one task) and starts tasks of the other types; the other agents start the
    first startable task of any type."""

    name = "decliner"

    def __init__(self, scenario):
        self.scenario = scenario

    def reset(self, seed: int) -> None:
        pass

    def act(self, obs):
        a = RoundActions.nothing(obs["task_mask"].shape[0], obs["alloc_low"].shape[2])
        taken = set()
        for i in range(a.task.shape[0]):
            for p in np.flatnonzero(obs["task_mask"][i, 1:]):
                t = int(obs["window_id"][i, p])
                if (i > 0 or obs["window_type"][i, p] != 0) and t not in taken:
                    a.task[i], a.node[i] = p, int(np.flatnonzero(obs["node_mask"][i, p])[0])
                    a.alloc[i] = obs["alloc_low"][i, p]
                    taken.add(t)
                    break
        for p in np.flatnonzero(obs["decline_mask"][0, 1:]):
            if obs["window_type"][0, p] == 0 and p != a.task[0] and int(obs["window_id"][0, p]) not in taken:
                a.decline_place(0, int(p))
                break
        return a


def test_teacher_declines_become_labels_and_imitation_learns_them(monkeypatch):
    sc = decline_scenario(40)
    monkeypatch.setattr("agents.registry.make_policy", lambda name, scenario, seed=0: Decliner(scenario))
    net = decline_net(sc, bias=None, hidden=32)  # the real starting bias: it almost never declines
    episodes = collect_lockstep(sc, net, ActingOptions(), [EpisodeJob(s, teacher="decliner") for s in (1, 2)])
    assert all(e.declined > 0 for e in episodes)
    decisions = [d for e in episodes for r in e.rounds for d in r.decisions]
    labelled = [d for d in decisions if any(st.decline for st in d.steps)]
    assert sum(e.declined for e in episodes) == len(labelled)  # every decline played is labelled once
    assert all(d.agent == 0 for d in labelled)
    both = [d for d in labelled if len(d.steps) == 2]
    assert both and all(not d.steps[0].decline and d.steps[1].decline for d in both)  # start, then decline
    for d in both:  # the decline is labelled under the masks after the start
        assert d.steps[1].masks["task_mask"][sc.window_size + 1 + d.steps[0].place] == 0
        assert d.steps[1].masks["task_mask"][1 + d.steps[0].place] == 0

    samples = build_samples(episodes, 0.95, 1.0)
    decline_rows = [s for s in samples if any(st.decline for st in s.steps)]
    with torch.no_grad():
        before, _, _ = evaluate_samples(net, decline_rows, episodes, CPU)
    imitation_update(net, torch.optim.Adam(net.parameters(), lr=3e-3), samples, episodes, epochs=15,
                     minibatch_rounds=64, rng=np.random.default_rng(0), device=CPU)
    with torch.no_grad():
        after, _, _ = evaluate_samples(net, decline_rows, episodes, CPU)
    assert after.mean() > before.mean() + 1.0  # the teacher's declines became much likelier

    # the same labels without the option: no decline choice, the teacher's start (or a pass) instead
    obs = build_observations(_engine_at_decline(sc))
    actions = Decliner(sc).act(obs)
    assert actions.decline is not None and actions.decline[0] >= 0
    plain = teacher_record(obs, actions, sc, RoundPlanner(sc))
    assert all(not st.decline and st.masks["task_mask"].shape == (sc.window_size + 1,)
               for d in plain.decisions for st in d.steps)


def _engine_at_decline(sc) -> Engine:
    """A strict engine at the first round in which the Decliner declines."""
    eng = Engine(sc, strict=True)
    eng.reset(1)
    teacher = Decliner(sc)
    while True:
        a = teacher.act(build_observations(eng))
        if a.decline is not None:
            return eng
        a.play(eng)
