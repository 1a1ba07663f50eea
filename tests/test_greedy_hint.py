"""Greedy hints (`ModelConfig.greedy_hint`, `tapfinger train --greedy-hint`): the `greedy`
heuristic's proposal for each deciding agent is an input of the network, added to its logits.

The hints are greedy's actions on the same rounds; a network that trusts them enough plays
greedy's episode; they travel with checkpoints and exported programs; PPO re-scores a hinted
decision exactly as it was chosen. Exactness has two limits by design: the liveness rule (an idle
cluster with a startable task may not pass, and greedy sometimes passes there, deferring a task
to a faster cluster) and the Bayes conflict rule (greedy leaves conflicts to the environment's
lowest agent index), so the episode test plays without Bayes on a scenario where greedy never
passes on an idle cluster, and the lockstep test checks that liveness is the only difference.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.export_format import HINT_INPUTS
from agents.exported import ExportedPolicy
from agents.heuristics.greedy import GreedyPolicy
from agents.learned.acting import ActingOptions, round_arrays
from agents.learned.actor import Decision, decide
from agents.learned.batch import collate
from agents.learned.checkpoint import load_checkpoint, read_payload, save_checkpoint, stored_model_config
from agents.learned.export import export_files
from agents.learned.export_program import HintedPolicyModule, feeds_to_tensors, random_feeds
from agents.learned.export_verify import compare_outputs, eager_outputs_for_feeds
from agents.learned.model import HINT_INIT, ModelConfig, TapFingerNet
from agents.learned.policy import LearnedPolicy, Planner
from envs.episode import run_episode
from envs.observations import build_observations
from tapfinger.sim.engine import Engine
from tapfinger.sim.workload import make_workload
from tests.helpers import play_in_lockstep, small

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def hint_net(scenario, seed: int = 0, hint: bool = True, weight: float | None = None) -> TapFingerNet:
    """A small network with every parameter moved off its initial value (as a trained one)."""
    torch.manual_seed(seed)
    net = TapFingerNet(ModelConfig.for_scenario(scenario, hidden=16, layers=1, greedy_hint=hint))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        if weight is not None:
            net.hint_weight.fill_(weight)
    return net.eval()


def varied_work(scenario, seed: int):
    """The seed's arrivals with unequal work: greedy's remembered work then changes its plans."""
    wl = make_workload(scenario, seed)
    return dataclasses.replace(wl, work=0.5 + 1.5 * np.random.default_rng(seed).random(wl.num_tasks))


def as_proposal(actions) -> dict[str, np.ndarray]:
    starts = actions.task >= 0
    return {"place": actions.task, "node": np.where(starts, actions.node, -1),
            "alloc": np.where(starts[:, None], actions.alloc, -1)}


def test_hints_are_greedys_actions_on_the_same_rounds_for_every_agent():
    sc = small("hetero-6", tasks=40)
    planner = Planner(hint_net(sc), sc, ActingOptions(multi_task=True, max_sequence=3))
    planner.record_arrays = False  # as collection and the exported runtime plan: no arrays in quiet rounds
    seen = []  # the observations the planner's GreedyPolicy acted on
    greedy_act = planner.greedy.act
    planner.greedy.act = lambda obs: (seen.append(obs), greedy_act(obs))[1]
    rng = np.random.default_rng(0)
    rounds = quiet = proposals = 0
    for seed in (1, 2):  # the second episode reuses task ids: reset must forget the first one's work
        eng = Engine(sc, strict=True)
        eng.reset(seed, workload=varied_work(sc, seed))
        reference = GreedyPolicy(sc)
        reference.reset(seed)
        planner.reset()
        while not eng.done:
            obs = build_observations(eng)
            actions, record = planner.act(obs, rng=rng)  # sampled: the states are not greedy's own
            rounds += 1
            assert len(seen) == rounds and seen[-1] is obs  # greedy acts once a round, quiet rounds too
            want = as_proposal(reference.act(obs))
            assert planner.greedy.work == reference.work
            if not record.arrays:  # nobody decided: the network was not asked
                quiet += 1
            else:
                got = record.arrays  # what the network was given
                assert np.array_equal(got["hint_task"].sum(axis=1), np.ones(sc.num_clusters))
                assert np.array_equal(got["hint_task"].argmax(axis=1) - 1, want["place"])
                assert np.array_equal(got["hint_node"], want["node"])
                assert np.array_equal(got["hint_alloc"], want["alloc"])
                proposals += int((want["place"] >= 0).sum())
            eng.play_round(actions.task, actions.node, actions.alloc)
    assert quiet > 0 and proposals > 40  # rounds where nobody decided, and real proposals, were checked


def test_a_net_that_trusts_the_hint_plays_greedys_episode(tmp_path):
    # Without Bayes, conflicts go to the lowest agent index as in the environment greedy relies on;
    # on synthetic-3 greedy never passes on an idle cluster, so the liveness rule never binds.
    sc = small("synthetic-3", tasks=40)
    ckpt = save_checkpoint(tmp_path / "c.pt", net=hint_net(sc, weight=1e3), scenario=sc, acting={"bayes": False},
                           step=0)
    policy = LearnedPolicy(sc, checkpoint=str(ckpt))
    assert policy.planner.greedy is not None  # a checkpoint with the option makes the hints
    for seed in (0, 1):
        wl = varied_work(sc, seed)
        learned = run_episode(sc, policy, seed, workload=wl)
        greedy = run_episode(sc, GreedyPolicy(sc), seed, workload=wl)
        assert learned.rounds == greedy.rounds and learned.unfinished == 0
        for key, value in greedy.records.items():
            np.testing.assert_array_equal(learned.records[key], value, err_msg=key)


def test_where_a_trusting_net_differs_from_greedy_the_liveness_rule_barred_greedys_pass():
    sc = small("edge-default", tasks=60)
    planner = Planner(hint_net(sc, weight=1e3), sc, ActingOptions(bayes=False))
    same = barred = 0
    for seed in (0, 1):
        eng = Engine(sc, strict=True)
        eng.reset(seed)
        greedy = GreedyPolicy(sc)
        greedy.reset(seed)
        planner.reset()
        while not eng.done:
            obs = build_observations(eng)
            want = as_proposal(greedy.act(obs))
            _, record = planner.act(obs, deterministic=True)
            for d in record.decisions:
                step, i = d.steps[0], d.agent
                if step.masks["task_mask"][want["place"][i] + 1]:
                    assert (step.place, step.node if step.place >= 0 else -1) == (want["place"][i], want["node"][i])
                    assert step.place < 0 or np.array_equal(step.alloc, want["alloc"][i])
                    same += 1
                else:
                    assert want["place"][i] == -1 and not (obs["running_id"][i] >= 0).any()
                    barred += 1
            a = greedy.act(obs)  # greedy drives: its own states
            eng.play_round(a.task, a.node, a.alloc)
    assert same > 100


def first_round_where_greedy_starts(sc, seed: int):
    """(observations, greedy's actions) of the first round of an episode in which greedy starts a task."""
    eng = Engine(sc)
    eng.reset(seed)
    greedy = GreedyPolicy(sc)
    while True:
        obs = build_observations(eng)
        actions = greedy.act(obs)
        if (actions.task >= 0).any():
            return obs, actions
        eng.play_round(actions.task, actions.node, actions.alloc)


def test_hint_terms_are_added_to_the_logits_of_an_otherwise_equal_network():
    """At initialisation a hinted network is the plain one plus HINT_INIT on greedy's choices:
    on the task, and on the node only when the task chosen is greedy's."""
    sc = small("edge-default", tasks=30)
    plain = TapFingerNet(ModelConfig.for_scenario(sc, hidden=16, layers=1)).eval()
    hinted = TapFingerNet(ModelConfig.for_scenario(sc, hidden=16, layers=1, greedy_hint=True)).eval()
    hinted.load_state_dict(plain.state_dict(), strict=False)  # all but the hint weights
    obs, greedy = first_round_where_greedy_starts(sc, seed=3)
    batch = collate([Planner(hinted, sc).round_arrays(obs)])
    i = int(np.flatnonzero(greedy.task >= 0)[0])
    p = int(greedy.task[i])
    rows = torch.tensor([i, i])
    task_mask = torch.as_tensor(obs["task_mask"][[i, i]]).bool()
    node_mask = torch.ones(2, obs["node_mask"].shape[2], dtype=torch.bool)
    place = torch.tensor([p, (p + 1) % sc.window_size])  # greedy's task, and another one
    with torch.no_grad():
        h = {name: net.encode(batch) for name, net in (("plain", plain), ("hinted", hinted))}
        task = {name: net.task_logits(h[name], batch, rows, task_mask)
                for name, net in (("plain", plain), ("hinted", hinted))}
        node = {name: net.node_logits(h[name], batch, rows, place, node_mask)
                for name, net in (("plain", plain), ("hinted", hinted))}
    want_task = torch.zeros(2, sc.window_size + 1)
    want_task[:, p + 1] = HINT_INIT
    assert torch.allclose((task["hinted"] - task["plain"])[task_mask], want_task[task_mask], atol=1e-5)
    want_node = torch.zeros_like(node["plain"])
    want_node[0, int(greedy.node[i])] = HINT_INIT  # row 1 chose another task: no node hint
    assert torch.allclose(node["hinted"] - node["plain"], want_node, atol=1e-5)


def test_ppo_rescores_a_hinted_decision_with_the_probability_it_was_chosen_with():
    sc = small("edge-default", tasks=30)
    net = hint_net(sc)
    planner = Planner(net, sc, ActingOptions(multi_task=True, max_sequence=3))
    rng = np.random.default_rng(1)
    eng = Engine(sc)
    eng.reset(2)
    steps = 0
    while not eng.done and steps < 60:
        actions, record = planner.act(build_observations(eng), rng=rng)
        batch = collate([record.arrays])
        with torch.no_grad():
            h = net.encode(batch)
            for d in record.decisions:
                for st in d.steps:
                    masks = {k: torch.as_tensor(v[None]) for k, v in st.masks.items()}
                    masks["task_mask"], masks["node_mask"] = masks["task_mask"].bool(), masks["node_mask"].bool()
                    given = Decision(torch.tensor([st.place]), torch.tensor([st.node]),
                                     torch.as_tensor(st.alloc[None]), None, None, None, None)
                    again = decide(net, h, batch, torch.tensor([d.agent]), masks, given=given)
                    assert float(again.logp_task) == pytest.approx(st.logp_task, abs=1e-5)
                    assert float(again.logp_rest) == pytest.approx(st.logp_rest, abs=1e-5)
                    steps += 1
        eng.play_round(actions.task, actions.node, actions.alloc)
    assert steps >= 60
    with pytest.raises(ValueError, match="greedy_hint.*Fix: plan the rounds with RoundPlanner"):
        plain_rounds = collate([round_arrays(build_observations(eng), sc)])  # no hints in these arrays
        net.task_logits(net.encode(plain_rounds), plain_rounds, torch.tensor([0]),
                        torch.ones(1, sc.window_size + 1, dtype=torch.bool))


def test_checkpoint_keeps_the_option_and_configs_without_it_load_as_off(tmp_path):
    sc = small("synthetic-3")
    net = hint_net(sc)
    ckpt = save_checkpoint(tmp_path / "c.pt", net=net, scenario=sc, acting={}, step=0)
    assert read_payload(ckpt)["model_config"]["greedy_hint"] is True
    loaded = load_checkpoint(ckpt, sc).net
    assert loaded.cfg.greedy_hint and torch.equal(loaded.hint_weight, net.hint_weight)
    old = ModelConfig.for_scenario(sc).to_dict()
    del old["greedy_hint"]  # written before the option existed
    assert stored_model_config(old, "old.pt").greedy_hint is False
    older = 0  # shipped files written before the option existed load with it off; newer ones as stored
    for shipped in sorted((REPO / "checkpoints").glob("*.pt")):
        stored = read_payload(shipped)["model_config"]
        older += "greedy_hint" not in stored
        assert stored_model_config(stored, shipped).greedy_hint is bool(stored.get("greedy_hint", False))
    assert older >= 1
    assert TapFingerNet(stored_model_config(old, "old.pt")).hint_weight is None  # the same weights as before


def test_train_flag_sets_the_model_option_off_by_default():
    from tapfinger.cli.train import parse

    base = ["--scenario", "synthetic-3", "--run-dir", "unused"]
    assert parse(base).training.model.greedy_hint is False
    cmd = parse([*base, "--greedy-hint"])
    assert cmd.training.model_config(small("synthetic-3")).greedy_hint is True


def test_hinted_program_module_equals_the_eager_model_on_random_graphs():
    net = hint_net(small("edge-default"), seed=4)
    module = HintedPolicyModule(net).eval()
    for k, s in enumerate([dict(N=4, nodes_per_cluster=[2, 3, 2, 2], P=12, M=6, W=10, S=3),
                           dict(N=2, nodes_per_cluster=[1, 3], P=3, M=0, W=10, S=2)]):
        feeds = random_feeds(net.cfg, **s, seed=k)
        assert all(key in feeds for key in HINT_INPUTS)
        with torch.no_grad():
            got = [t.numpy() for t in module(*feeds_to_tensors(feeds))]
        assert compare_outputs(got, eager_outputs_for_feeds(net, feeds), atol=1e-6) is None, s


@pytest.fixture(scope="module")
def exported(one_torch_thread, tmp_path_factory) -> dict:
    """A hinted synthetic-3 checkpoint and its onnx and pt2 exports (verified against the eager model)."""
    d = tmp_path_factory.mktemp("hinted")
    sc = small("synthetic-3", tasks=40)
    ckpt = save_checkpoint(d / "c.pt", net=hint_net(sc, seed=2), scenario=sc, acting={}, step=3)
    results = export_files(ckpt, {fmt: d / f"policy.{fmt}" for fmt in ("onnx", "pt2")}, scenario=sc)
    assert all(r.verified_rounds > 5 for r in results)
    return {"scenario": sc, "checkpoint": ckpt, **{r.metadata["program"]["format"]: r.path for r in results}}


@pytest.mark.slow  # one export: about 30 s, most of it the ONNX conversion
def test_exported_hinted_policies_choose_the_eager_actions(exported):
    sc = exported["scenario"]
    eager = LearnedPolicy(sc, checkpoint=str(exported["checkpoint"]))
    others = [ExportedPolicy(sc, path=exported[fmt], kind=fmt) for fmt in ("onnx", "pt2")]
    assert all(p.planner.greedy is not None for p in others)
    assert all(p.metadata["feature_layout"]["inputs"][-3:] == list(HINT_INPUTS) for p in others)
    play_in_lockstep(sc, eager, others, 5, workload=varied_work(sc, 5))


def test_hinted_onnx_policy_runs_without_torch(exported):
    code = ("import sys\n"
            "from agents.registry import make_policy\n"
            "from envs.episode import run_episode\n"
            "from tests.helpers import small\n"
            "sc = small('synthetic-3', tasks=15)\n"
            f"policy = make_policy('onnx:{exported['onnx']}', sc)\n"
            "assert policy.planner.greedy is not None\n"
            "assert (run_episode(sc, policy, seed=0).records['jct'] >= 1).all()\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torch_geometric')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"')) == []


def test_another_heuristic_can_make_the_hints_and_planners_or_learned_policies_cannot():
    from agents.heuristics.deadline_aware import EdgeFlowPolicy
    from tapfinger.sim.scenario import load_scenario
    from agents.learned.acting import RoundPlanner, hint_arrays
    from envs.observations import build_observations
    from tapfinger.sim.engine import Engine

    sc = load_scenario("cloud-edge")
    sc = dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=20))
    planner = RoundPlanner(sc, greedy_hint=True, hint_policy="edgeflow", decline=True)
    reference = EdgeFlowPolicy(sc)
    reference.reset(0)
    eng = Engine(sc)
    eng.reset(3)
    starts = 0
    for _ in range(40):  # rounds of edgeflow's own episode: the planner's edgeflow proposes the same
        obs = build_observations(eng)
        actions = reference.act(obs)
        got = planner.hints(obs)
        want = hint_arrays(actions, sc.window_size)
        assert all(np.array_equal(got[k], want[k]) for k in want)
        starts += int((actions.task >= 0).sum())
        actions.play(eng)
    assert starts > 0
    for bad in ("rollout", "tapfinger"):
        with pytest.raises(ValueError, match="not a heuristic that acts on observations alone"):
            RoundPlanner(sc, greedy_hint=True, hint_policy=bad, decline=True)
    net = TapFingerNet(ModelConfig.for_scenario(sc, hidden=16, layers=1, greedy_hint=True, hint_policy="edgeflow",
                                                decline=True))
    assert net.cfg.to_dict()["hint_policy"] == "edgeflow"
