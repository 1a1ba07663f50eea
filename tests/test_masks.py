"""Mask updates of multi-task sequences (`agents.learned.masks`), against masks derived by hand,
and whole episodes in which every planned step is checked against the steps before it.

A multi-task decision is a sequence of (place, node, allocation) choices made at once; the masks
of each choice must be those of the observation after the earlier choices of the same sequence
(their tasks taken, their allocations subtracted from their nodes). The planner plays the later
choices in the following rounds and drops those that have become unplayable (`step_still_valid`),
so a wrong update would be silently absorbed in an ordinary run: the tests below look at the
sequences themselves, and play them without that re-validation where nothing else can
invalidate them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agents.learned.masks import MASK_KEYS, step_still_valid, update_masks

GRID = np.array([16, 8, 32])  # cpu, gpu, mem


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def initial():
    """One agent: node 0 free (16, 4, 64), node 1 free (8, 2, 32), node 2 padding; window places
    0: IMG (min 2, 1, 6), 1: LM (2, 1, 12), 2: SPEECH (4, 1, 8), 3: empty. Masks as
    `build_observations` makes them."""
    free = np.array([[16, 4, 64], [8, 2, 32], [0, 0, 0]])
    m = {
        "task_mask": np.array([1, 1, 1, 1, 0]),
        "node_mask": np.array([[1, 1, 0], [1, 1, 0], [1, 1, 0], [0, 0, 0]]),
        "alloc_low": np.array([[2, 1, 6], [2, 1, 12], [4, 1, 8], [0, 0, 0]]),
        "alloc_high": np.array([[16, 4, 32], [8, 2, 32], [0, 0, 0]]),  # min(free, grid); mem capped at 32
    }
    occupied = np.array([True, True, True, False])
    return m, free, occupied


def assert_masks(got, **want):
    for k, v in want.items():
        assert np.array_equal(got[k], np.array(v)), f"{k}: {got[k].tolist()} != {v}"


def test_masks_after_each_choice_of_a_three_task_sequence():
    m0, free, occupied = initial()
    before = {k: v.copy() for k, v in m0.items()}

    # 1. IMG (place 0) on node 1 with (6, 1, 20): node 1 keeps (2, 1, 12). LM (min 2, 1, 12) still
    #    fits there exactly, SPEECH (cpu 4) no longer does; IMG is taken.
    m1 = update_masks(m0, free, 0, 1, np.array([6, 1, 20]), GRID, occupied, room=2)
    assert_masks(m1, alloc_high=[[16, 4, 32], [2, 1, 12], [0, 0, 0]],
                 node_mask=[[0, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]],
                 task_mask=[1, 0, 1, 1, 0], alloc_low=before["alloc_low"].tolist())
    assert free.tolist() == [[16, 4, 64], [2, 1, 12], [0, 0, 0]]  # the caller's free is updated in place
    assert occupied.tolist() == [False, True, True, False]
    for k in MASK_KEYS:  # the masks the first choice was made from are left as they were
        assert np.array_equal(m0[k], before[k]), k

    # 2. LM (place 1) on node 0 with (10, 3, 20): node 0 keeps (6, 1, 44), shown capped by the grid
    #    at (6, 1, 32). SPEECH still fits on node 0 only.
    m2 = update_masks(m1, free, 1, 0, np.array([10, 3, 20]), GRID, occupied, room=1)
    assert_masks(m2, alloc_high=[[6, 1, 32], [2, 1, 12], [0, 0, 0]],
                 node_mask=[[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 0]], task_mask=[1, 0, 0, 1, 0])

    # 3. SPEECH (place 2) on node 0 again with (4, 1, 8): both allocations come off node 0, which
    #    keeps (2, 0, 36). Nothing is left to choose.
    m3 = update_masks(m2, free, 2, 0, np.array([4, 1, 8]), GRID, occupied, room=0)
    assert_masks(m3, alloc_high=[[2, 0, 32], [2, 1, 12], [0, 0, 0]],
                 node_mask=np.zeros((4, 3), dtype=int).tolist(), task_mask=[1, 0, 0, 0, 0])
    assert free.tolist() == [[2, 0, 36], [2, 1, 12], [0, 0, 0]]


def test_no_room_left_masks_every_task_but_keeps_the_node_masks():
    m0, free, occupied = initial()
    m0["task_mask"][0] = 0  # the liveness rule had masked "do nothing": it stays as it was
    m = update_masks(m0, free, 2, 0, np.array([4, 1, 8]), GRID, occupied, room=0)
    assert_masks(m, task_mask=[0, 0, 0, 0, 0], node_mask=[[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]],
                 alloc_high=[[12, 3, 32], [8, 2, 32], [0, 0, 0]])
    _, free, occupied = initial()
    m = update_masks(m0, free, 2, 0, np.array([4, 1, 8]), GRID, occupied, room=1)
    assert_masks(m, task_mask=[0, 1, 1, 0, 0])


def test_a_task_that_fits_on_no_node_any_more_is_masked():
    m0, free, occupied = initial()
    # all of node 0's gpus and node 1's cpus: no task fits anywhere
    m = update_masks(m0, free, 0, 0, np.array([2, 4, 6]), GRID, occupied, room=5)
    m = update_masks(m, free, 1, 1, np.array([8, 1, 12]), GRID, occupied, room=4)
    assert_masks(m, alloc_high=[[14, 0, 32], [0, 1, 20], [0, 0, 0]], task_mask=[1, 0, 0, 0, 0],
                 node_mask=np.zeros((4, 3), dtype=int).tolist())


def test_step_still_valid_checks_task_place_node_and_allocation():
    obs = {"window_id": np.array([[7, 8, -1]]), "task_mask": np.array([[1, 1, 1, 0]]),
           "node_mask": np.array([[[1, 0], [1, 1], [0, 0]]]), "alloc_high": np.array([[[4, 4], [2, 2]]])}
    assert step_still_valid(obs, 0, 1, 1, np.array([2, 2]), 8)
    assert not step_still_valid(obs, 0, 1, 1, np.array([2, 3]), 8)  # more than the node has
    assert not step_still_valid(obs, 0, 0, 1, np.array([1, 1]), 7)  # the task does not fit on node 1
    assert not step_still_valid(obs, 0, 1, 1, np.array([1, 1]), 7)  # another task is in that place
    obs["task_mask"][0, 2] = 0
    assert not step_still_valid(obs, 0, 1, 0, np.array([1, 1]), 8)  # the task is masked


# ---------------------------------------------------------------------------------------------- episodes


def expected_masks(obs, i, static, free, occupied, room, idle):
    """The masks of agent i after the earlier choices of its sequence, from the observation alone."""
    valid = obs["node_id"][i] >= 0
    low = obs["alloc_low"][i]
    tmin = static.type_min[np.maximum(obs["window_type"][i], 0)]
    fits = (tmin[:, None, :] <= free[None, :, :]).all(axis=2) & valid[None, :] & occupied[:, None]
    return {"task_mask": np.concatenate([[0 if idle else 1], fits.any(axis=1) & (room > 0)]).astype(int),
            "node_mask": fits.astype(int), "alloc_low": low,
            "alloc_high": np.where(valid[:, None], np.minimum(free, static.grid_max), 0)}


def check_sequence(obs, i, steps, static, max_sequence, stats):
    """Every choice of a planned sequence is feasible given the observation and the choices before
    it, and was made from exactly the masks that follow from them."""
    free = obs["node_free"][i].astype(np.int64).copy()
    occupied = obs["window_id"][i] >= 0
    room = int(static.max_running[i] - (obs["running_id"][i] >= 0).sum())
    idle = not (obs["running_id"][i] >= 0).any()
    assert 1 <= len(steps) <= max_sequence
    nodes = []
    for k, s in enumerate(steps):
        want = expected_masks(obs, i, static, free, occupied, room, idle)
        got = {key: np.asarray(s.masks[key]).astype(int) for key in MASK_KEYS}
        if k > 0 and idle:
            # The liveness rule asks an idle cluster for one start; that "do nothing" is allowed
            # again after it is checked in tests/test_acting.py, not here.
            want["task_mask"][0] = got["task_mask"][0]
        for key in MASK_KEYS:
            assert np.array_equal(got[key], want[key].astype(int)), \
                f"agent {i} step {k}: {key} {got[key].tolist()} != {want[key].tolist()}"
        if s.place < 0:
            assert k == len(steps) - 1 and got["task_mask"][0], f"agent {i}: a forbidden or early 'do nothing'"
            return
        assert want["task_mask"][s.place + 1] and want["node_mask"][s.place, s.node], (i, k, s.place, s.node)
        assert s.task_id == obs["window_id"][i, s.place]
        assert (s.alloc >= obs["alloc_low"][i, s.place]).all() and (s.alloc <= static.grid_max).all()
        # the sum of this sequence's allocations on a node never exceeds what it had free
        assert (s.alloc <= free[s.node]).all(), f"agent {i} step {k}: {s.alloc.tolist()} > free {free[s.node].tolist()}"
        free[s.node] -= s.alloc
        occupied[s.place] = False
        room -= 1
        nodes.append(s.node)
    stats["long"] += len(nodes) >= 2
    stats["same_node"] += len(nodes) > len(set(nodes))
    if len(steps) < max_sequence:  # a sequence without a final "do nothing" ends when nothing is left
        assert not expected_masks(obs, i, static, free, occupied, room, idle)["task_mask"][1:].any()


def busy(name, tasks, **changes):
    """A short episode under a heavy arrival burst: full windows (long sequences) and full nodes."""
    import dataclasses

    from tests.helpers import small

    sc = small(name, tasks=tasks, **changes)
    return dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, rate=10.0))


def make_planner(sc, max_sequence=4):
    from agents.learned.model import ModelConfig, TapFingerNet
    from agents.learned.acting import ActingOptions
    from agents.learned.policy import Planner

    torch.manual_seed(0)
    net = TapFingerNet(ModelConfig.for_scenario(sc, hidden=32)).eval()
    return Planner(net, sc, ActingOptions(multi_task=True, max_sequence=max_sequence))


@pytest.mark.parametrize("name", ["edge-default", "hetero-6"])
def test_every_planned_sequence_is_feasible_step_by_step(name):
    from envs.observations import build_observations
    from tapfinger.sim.engine import Engine

    sc = busy(name, tasks=30)
    planner = make_planner(sc)
    eng = Engine(sc, strict=True)
    eng.reset(2)
    g = np.random.default_rng(0)
    stats = {"long": 0, "same_node": 0, "decisions": 0}
    while not eng.done:
        obs = build_observations(eng)
        actions, record = planner.act(obs, rng=g)
        for d in record.decisions:
            check_sequence(obs, d.agent, d.steps, planner.static, planner.options.max_sequence, stats)
            stats["decisions"] += 1
        eng.play_round(actions.task, actions.node, actions.alloc)
    assert eng.finished_count == 30
    # not vacuous: sequences of several tasks, some with several tasks on one node
    assert stats["long"] >= 5 and stats["same_node"] >= 4, stats


@pytest.mark.parametrize("max_running", [None, 2])
def test_planned_sequences_play_without_re_validation(monkeypatch, max_running):
    """With each task visible to its home cluster only, nothing but the cluster's own starts changes
    what it can start within a slot, so every step it planned must be playable as planned: the
    re-validation is switched off and the strict engine raises on the first infeasible one. With
    `max_running` = 2 the clusters' room for running tasks, not their resources, ends sequences."""
    import dataclasses

    import agents.learned.acting as acting_module
    from envs.observations import build_observations
    from tapfinger.sim.engine import Engine

    sc = busy("edge-default", tasks=30, visibility="home")
    planner = make_planner(sc)
    eng = Engine(sc, strict=True)
    if max_running is not None:
        limited = dataclasses.replace(eng.static, max_running=np.full(eng.N, max_running, dtype=np.int64))
        eng.static = planner.static = limited
    monkeypatch.setattr(acting_module, "step_still_valid", lambda *args: True)
    eng.reset(2)
    g = np.random.default_rng(0)
    stats = {"long": 0, "same_node": 0}
    planned = queued = 0
    while not eng.done:
        obs = build_observations(eng)
        had_queue = [bool(q) for q in planner.queue]
        actions, record = planner.act(obs, rng=g)
        for d in record.decisions:
            check_sequence(obs, d.agent, d.steps, planner.static, planner.options.max_sequence, stats)
            planned += sum(s.place >= 0 for s in d.steps)
        queued += sum(h and actions.task[i] >= 0 for i, h in enumerate(had_queue))
        eng.play_round(actions.task, actions.node, actions.alloc)  # strict: an infeasible step raises
    assert eng.finished_count == 30 and eng.conflicts.sum() == 0
    assert planned == 30  # every planned start was played (each task once)
    assert queued >= (6 if max_running is None else 3), queued  # later steps of sequences were played
