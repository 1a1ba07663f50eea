"""The learned policy's one round loop (`agents.learned.acting.RoundPlanner`), driven by a scorer
written here (numpy only, as the exported runtimes' scorers are), and by the eager network.

The liveness rule asks an idle cluster with a startable task for one start, not for a whole
sequence: in multi-task mode "do nothing" is masked at the first choice of a decision only.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agents.learned.acting import ActingOptions, Choices, RoundPlanner
from envs.observations import build_observations
from tests.helpers import engine_with

REPO = Path(__file__).resolve().parent.parent


class PassingScorer:
    """Passes whenever its mask allows it; otherwise starts the first allowed task on the first
    allowed node at the task's minimum. Records the task masks it was given."""

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def for_round(self, arrays):
        return self

    def score(self, agents, masks):
        self.seen.append(masks["task_mask"].copy())
        S = len(agents)
        place, node = np.full(S, -1), np.zeros(S, dtype=np.int64)
        alloc = np.zeros((S, masks["alloc_low"].shape[2]), dtype=np.int64)
        for j in range(S):
            tm = masks["task_mask"][j]
            if tm[0]:
                continue
            p = int(np.flatnonzero(tm[1:])[0])
            place[j] = p
            node[j] = int(np.flatnonzero(masks["node_mask"][j, p])[0])
            alloc[j] = masks["alloc_low"][j, p]
        return Choices(place, node, alloc, np.ones(S))


def idle_round():
    """hetero-6 at its first round: every cluster idle, four IMG tasks visible to clusters 0 and 1,
    so each of them could start several tasks in one multi-task decision."""
    tasks = [(0, "IMG", [0]), (0, "IMG", [0]), (0, "IMG", [1]), (0, "IMG", [1])]
    eng = engine_with("hetero-6", tasks)
    return eng, build_observations(eng)


def test_an_idle_cluster_starts_one_task_then_may_pass():
    eng, obs = idle_round()
    planner = RoundPlanner(eng.scenario, ActingOptions(multi_task=True, max_sequence=4))
    scorer = PassingScorer()
    actions, record = planner.plan_round(obs, scorer)
    assert sorted(d.agent for d in record.decisions) == [0, 1]
    for d in record.decisions:
        # one forced start, then the scorer's own choice: it passes as soon as it may
        assert [s.place >= 0 for s in d.steps] == [True, False], (d.agent, [s.place for s in d.steps])
        assert d.steps[0].masks["task_mask"][0] == 0 and d.steps[1].masks["task_mask"][0] == 1
    assert actions.task[[0, 1]].tolist() == [0, 0] and (actions.task[2:] == -1).all()
    assert all(not q for q in planner.queue)  # nothing planned beyond the forced start
    first, second = scorer.seen
    assert not first[:, 0].any() and second[:, 0].all()


def test_a_busy_cluster_is_not_forced_to_start():
    eng, obs = idle_round()
    obs = {k: v.copy() for k, v in obs.items()}
    obs["running_id"][0, 0] = 99  # cluster 0 runs something: the liveness rule does not apply to it
    _, record = RoundPlanner(eng.scenario, ActingOptions(multi_task=True)).plan_round(obs, PassingScorer())
    steps = {d.agent: [s.place for s in d.steps] for d in record.decisions}
    assert steps == {0: [-1], 1: [0, -1]}


def test_liveness_masks_only_the_first_choice_of_the_network_sequences():
    """With the eager network over a busy episode: every idle agent's first choice is made with
    "do nothing" masked, its later choices with it allowed again (before the fix the first
    choice's mask was carried forward, and an idle cluster had to fill its whole sequence)."""
    import torch

    from agents.learned.model import ModelConfig, TapFingerNet
    from agents.learned.policy import Planner
    from tapfinger.sim.engine import Engine
    from tests.helpers import small

    sc = small("edge-default", tasks=40)
    sc = dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, rate=10.0))
    torch.manual_seed(0)
    net = TapFingerNet(ModelConfig.for_scenario(sc, hidden=16)).eval()
    planner = Planner(net, sc, ActingOptions(multi_task=True, max_sequence=4))
    eng = Engine(sc, strict=True)
    eng.reset(1)
    g = np.random.default_rng(0)
    later = 0
    while not eng.done:
        obs = build_observations(eng)
        actions, record = planner.act(obs, rng=g)
        for d in record.decisions:
            if (obs["running_id"][d.agent] >= 0).any():
                continue
            assert d.steps[0].masks["task_mask"][0] == 0 and d.steps[0].place >= 0
            for s in d.steps[1:]:
                assert s.masks["task_mask"][0] == 1, (d.agent, [st.place for st in d.steps])
                later += 1
        actions.play(eng)
    assert later >= 3  # idle clusters made later choices


def test_the_round_loop_imports_neither_torch_nor_torch_geometric():
    code = ("import sys\n"
            "import agents.learned.acting, agents.exported, agents.export_format, envs.graph\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_geometric')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("bayes, winner", [(True, 4), (False, 1)])
def test_conflicts_are_resolved_by_the_loop_for_any_scorer(bayes, winner):
    """hetero-6 clusters 1 (8 cpu, 8 gpu) and 4 (24, 24), both idle, see one IMG task; the scorer
    gives cluster 1 probability 0.9 and cluster 4 0.5. By probability alone cluster 1 wins; the
    Bayes prior (IMG's minimum fits 4 times on cluster 1, 12 times on cluster 4) gives the task to
    cluster 4: 0.9 e^4 < 0.5 e^12."""
    eng = engine_with("hetero-6", [(0, "IMG", [1, 4])])
    obs = build_observations(eng)
    sc = PassingScorer()
    score = sc.score
    sc.score = lambda agents, masks: dataclasses.replace(score(agents, masks),
                                                         task_prob=np.where(agents == 1, 0.9, 0.5))
    actions, record = RoundPlanner(eng.scenario, ActingOptions(bayes=bayes)).plan_round(obs, sc)
    assert [i for i in range(eng.N) if actions.task[i] >= 0] == [winner]
    assert [d.agent for d in record.decisions if d.lost_conflict] == [5 - winner]
