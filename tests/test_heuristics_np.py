"""Non-preemptive heuristics: fifo, sjf, drf, greedy (agents/heuristics/queue_order.py, greedy.py).

Full episodes in strict mode (an action the masks forbid raises), and small hand-made
instances where the right choice of each heuristic is known.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from agents.heuristics.estimates import SpeedModel
from agents.heuristics.greedy import GreedyPolicy
from agents.registry import make_policy
from envs.observations import build_observations
from tapfinger.sim.engine import RUNNING, Engine
from envs.episode import run_episode
from tapfinger.sim.progress import NEVER
from tapfinger.sim.scenario import Cluster, ScenarioError, load_scenario
from tapfinger.sim.speed import efficient_allocations
from tests.helpers import end_slot, engine_with, require_shared_data, small, start, workload

NP_POLICIES = ["fifo", "sjf", "drf", "greedy"]


def decide(name: str, eng: Engine):
    """The policy's actions for the engine's current round."""
    policy = make_policy(name, eng.scenario)
    policy.reset(0)
    return policy.act(build_observations(eng))


# ---------------------------------------------------------------- full episodes, strict engine
@pytest.mark.parametrize("scenario", ["synthetic-3", "edge-default"])
@pytest.mark.parametrize("name", NP_POLICIES)
def test_full_episode_respects_masks(name, scenario):
    sc = small(scenario, tasks=120)
    eng = Engine(sc, strict=True)  # any invalid action raises InvalidActionError
    result = run_episode(sc, make_policy(name, sc), seed=3, engine=eng)
    assert not result.truncated
    assert result.invalid_actions == 0
    assert (result.records["jct"] >= 1).all()  # every task finished
    assert (eng.switches == 0).all()  # non-preemptive: no allocation ever changed


def test_greedy_is_deterministic():
    sc = small("hetero-6", tasks=80)
    a = run_episode(sc, make_policy("greedy", sc), seed=5).records
    b = run_episode(sc, make_policy("greedy", sc), seed=5).records
    assert np.array_equal(a["start"], b["start"]) and np.array_equal(a["alloc"], b["alloc"])


# ---------------------------------------------------------------- progress predictions
@pytest.mark.parametrize("scenario, type_name, alloc", [
    ("synthetic-3", "LM", [2, 10]), ("synthetic-3", "LM", [2, 3]), ("synthetic-3", "IMG", [2, 1]),
    ("edge-default", "SPEECH", [4, 3, 8]), ("edge-default", "LM", [2, 4, 12]),
])
def test_predicted_slots_match_the_engine(scenario, type_name, alloc):
    eng = engine_with(scenario, [(0, type_name, [0])])
    model = SpeedModel(eng.scenario)
    k = eng.task_type[0]
    predicted = model.slots_for(k, np.array(alloc))
    start(eng, {0: (0, 0, alloc)})
    slots = 0
    while not eng.done:
        if slots:  # a running task's remaining time, as greedy predicts it each slot
            assert model.remaining(k, np.array(alloc), float(eng.progress[0])) == predicted - slots
        end_slot(eng)
        slots += 1
    assert slots == predicted == eng.task_records()["jct"][0]


def test_efficient_allocations_of_the_synthetic_model():
    model = SpeedModel(load_scenario("synthetic-3"))
    lm = [(o.slots, o.alloc.tolist()) for o in model.options[1]]
    assert lm[:4] == [(2, [2, 10]), (3, [2, 7]), (4, [2, 5]), (5, [2, 4])]  # CPU above 2 buys nothing
    assert [(o.slots, o.alloc.tolist()) for o in model.options[0]] == [(4, [2, 1])]  # IMG: minimum only


def test_efficient_allocations_are_the_non_dominated_cells():
    # Against brute force on random slot tables with many ties: the cells no other cell beats
    # in speed with no more cpu and gpu, fastest first, then fewer cpu + gpu, gpu, cpu.
    rng = np.random.default_rng(3)
    for _ in range(20):
        slots = rng.integers(1, 6, size=(7, 6))
        slots[rng.random(slots.shape) < 0.1] = NEVER
        low, high = (int(rng.integers(0, 3)), int(rng.integers(0, 3))), (6, 5)
        cells = [(int(slots[c, g]), c, g) for c in range(low[0], 7) for g in range(low[1], 6) if slots[c, g] < NEVER]
        expect = sorted((s, c, g) for s, c, g in cells
                        if not any((s2, c2, g2) != (s, c, g) and s2 <= s and c2 <= c and g2 <= g for s2, c2, g2 in cells))
        expect.sort(key=lambda x: (x[0], x[1] + x[2], x[2], x[1]))
        assert efficient_allocations(slots, low, high).tolist() == [list(x) for x in expect]


# ---------------------------------------------------------------- fifo, sjf, drf
def test_fifo_starts_the_oldest_task():
    eng = engine_with("synthetic-3", [(0, "IMG", [0]), (0, "IMG", [0]), (0, "IMG", [0])])
    eng.age[:3] = [1, 5, 3]
    act = decide("fifo", eng)
    assert act.task[0] == 1
    assert act.alloc[0].tolist() == [2, 1]  # IMG gains nothing above its minimum
    eng.age[:3] = [4, 4, 4]
    assert decide("fifo", eng).task[0] == 0  # ties: lower task id


def test_sjf_starts_the_shortest_and_fifo_the_oldest():
    eng = engine_with("synthetic-3", [(0, "IMG", [0]), (0, "LM", [0])])
    eng.age[:2] = [5, 0]
    assert decide("fifo", eng).task[0] == 0
    act = decide("sjf", eng)
    assert act.task[0] == 1 and act.alloc[0].tolist() == [2, 10]  # LM: 2 slots beats IMG's 4


def test_sjf_uses_the_allocation_the_task_would_get_now():
    # Only 3 GPUs free: LM would run 7 slots, so the IMG (4 slots) is shorter.
    eng = engine_with("synthetic-3", [(0, "IMG", [0]), (0, "LM", [0])])
    eng.node_free[0] = [16, 3]
    act = decide("sjf", eng)
    assert act.task[0] == 0
    eng.age[:2] = [0, 5]
    act = decide("fifo", eng)  # fifo takes the LM anyway, at the fastest that fits
    assert act.task[0] == 1 and act.alloc[0].tolist() == [2, 3]


def test_drf_starts_the_type_with_the_smallest_dominant_share():
    eng = engine_with("synthetic-3", [(0, "LM", [0]), (0, "LM", [0]), (0, "IMG", [0])])
    start(eng, {0: (0, 0, [2, 10])})  # LM holds 10/16 GPUs of cluster 0
    eng.age[1:3] = [3, 0]  # the waiting LM is older
    assert decide("fifo", eng).task[0] == 1
    assert decide("drf", eng).task[0] == 2  # IMG's share is 0


# ---------------------------------------------------------------- greedy
def test_greedy_gives_lm_its_fast_allocation_and_img_its_minimum():
    eng = engine_with("synthetic-3", [(0, "LM", [0]), (0, "IMG", [1])])
    act = decide("greedy", eng)
    assert act.task[0] == 0 and act.alloc[0].tolist() == [2, 10]
    assert act.task[1] == 0 and act.alloc[1].tolist() == [2, 1]


def test_greedy_waits_for_gpus_that_free_up_next_slot():
    eng = engine_with("synthetic-3", [(0, "LM", [0]), (1, "LM", [0])])
    start(eng, {0: (0, 0, [2, 10])})
    end_slot(eng)  # the first LM has one slot left; 6 GPUs free now, 16 next slot
    act = decide("greedy", eng)
    assert act.task[0] == -1  # 1 slot of waiting + 2 slots beats 4 slots on 6 GPUs


def test_greedy_starts_slower_when_waiting_would_take_longer():
    eng = engine_with("synthetic-3", [(0, "IMG", [0]), (1, "LM", [0])])
    start(eng, {0: (0, 0, [2, 10])})  # an IMG holding 10 GPUs for 4 slots
    end_slot(eng)
    act = decide("greedy", eng)
    assert act.task[0] == 0
    assert act.alloc[0].tolist() == [2, 5]  # 4 slots now, the fewest GPUs that give 4 slots


def test_greedy_leaves_a_shared_task_to_a_faster_cluster():
    # hetero-6: cluster 0 has 4 GPUs (LM: 5 slots), cluster 5 has 32 (LM: 2 slots). The lowest
    # agent index would win the conflict, so cluster 0 must not pick the task.
    eng = engine_with("hetero-6", [(0, "LM", [0, 5])])
    act = decide("greedy", eng)
    assert act.task[0] == -1
    assert act.task[5] == 0 and act.alloc[5].tolist() == [2, 10]
    eng.age[0] = 2  # after `patience` slots of waiting, cluster 0 takes it after all
    assert decide("greedy", eng).task[0] == 0


def test_greedy_takes_a_task_only_it_sees_even_if_slow():
    eng = engine_with("hetero-6", [(0, "LM", [0])])
    act = decide("greedy", eng)
    assert act.task[0] == 0 and act.alloc[0].tolist() == [2, 4]


@pytest.mark.parametrize("with_old_lm", [True, False])
def test_greedy_reserves_for_the_older_task(with_old_lm):
    # hetero-6 cluster 0 (4 CPU, 4 GPU). A running IMG holds 3 GPUs for one more slot. An older
    # LM waits for all 4 GPUs from next slot (6 slots in all, against 21 on the 1 GPU free now);
    # a new IMG would fit now, but holding that GPU for 4 slots would push the LM back: it waits.
    tasks = [(0, "IMG", [0])] + ([(1, "LM", [0])] if with_old_lm else []) + [(3, "IMG", [0])]
    eng = engine_with("hetero-6", tasks)
    start(eng, {0: (0, 0, [2, 3])})
    for _ in range(3):
        end_slot(eng)
    act = decide("greedy", eng)
    if with_old_lm:
        assert act.task[0] == -1
    else:
        assert act.task[0] == 0 and act.alloc[0].tolist() == [2, 1]


def _trace_or_skip(name: str):
    try:
        return load_scenario(name)
    except ScenarioError as exc:  # the measured profile lives outside the repository
        pytest.skip(str(exc))


def test_greedy_on_profiles_fastest_when_alone_cheaper_under_pressure():
    require_shared_data("trace-3")
    eng = engine_with("trace-3", [(0, "audio", [0])])
    assert decide("greedy", eng).alloc[0].tolist() == [11, 1]  # 8 slots, fewest CPUs that give 8
    eng = engine_with("trace-3", [(0, "lm", [0])])
    assert decide("greedy", eng).alloc[0].tolist() == [8, 4]  # 21 slots, the fastest lm run
    eng = engine_with("trace-3", [(0, "lm", [0])] * 10)  # nine more lm tasks wait behind it
    assert decide("greedy", eng).alloc[0].tolist() == [1, 1]


def test_greedy_uses_the_node_that_fits_on_multi_node_clusters():
    # edge-default "retail": nodes (8 cpu, 2 gpu, 32 mem) and (8, 1, 16). An LM (12 GiB) fits
    # both; fill node 0 so that only node 1 fits.
    eng = engine_with("edge-default", [(0, "LM", [2])])
    eng.node_free[eng.static.cluster_nodes[2, 0]] = [1, 0, 0]
    act = decide("greedy", eng)
    assert act.task[2] == 0 and act.node[2] == 1 and act.alloc[2].tolist() == [2, 1, 12]


# ---------------------------------------------------------------- greedy's deferral, delayed starts
def _deferral_engine(remaining: int, x_wait: int, x_visible=(0, 1), gpus: int = 10, r_gpus: int = 6,
                     x_work: float = 1.0) -> tuple[Engine, int, int]:
    """Two clusters: 0 = (16 CPU, 10 GPU), 1 = (16, 16). On cluster 0 an IMG task R holds
    6 GPUs (4 slots), so 4 GPUs are free now and all 10 come free after `remaining` slots.
    Waiting in cluster 0's window: X, an LM task seen by both clusters that has waited `x_wait`
    slots, and Y, an IMG task only cluster 0 sees, just arrived (so X is planned first).

    X on cluster 0: now on the 4 free GPUs it runs 5 slots; after R it gets 10 GPUs and runs 2,
    so its plan starts after d = `remaining` slots (d + S = remaining + 2 <= 4 < 5). Elsewhere
    (cluster 1, 10 of its 16 GPUs) it would run 2 slots. Y needs 1 GPU for 4 slots: it fits now, unless
    X's plan reserves all 10 GPUs during Y's 4 slots. So agent 0 starts Y exactly when it
    defers X (a deferred task reserves nothing), and passes when it plans X normally.
    (Those numbers are for the defaults; `gpus`, `r_gpus` and `x_work` change cluster 0's GPUs,
    R's GPUs and X's work.) Returns the engine and the window places of X and Y in cluster 0."""
    sc = dataclasses.replace(load_scenario("synthetic-3"),
                             clusters=(Cluster("a", ((16, gpus),)), Cluster("b", ((16, 16),))))
    now = 4 - remaining  # R runs 4 slots from slot 0
    tasks = [(0, "IMG", [0]), (now - x_wait, "LM", list(x_visible)), (now, "IMG", [0])]
    wl = workload(sc, tasks)
    wl = dataclasses.replace(wl, work=np.array([1.0, x_work, 1.0]))
    eng = Engine(sc, strict=True)
    eng.reset(0, workload=wl)
    start(eng, {0: (0, 0, [2, r_gpus])})
    while eng.slot < now:
        end_slot(eng)
    assert eng.age[1] == x_wait and eng.age[2] == 0 and eng.status[0] == RUNNING  # R still runs
    assert eng.node_free[0].tolist() == [14, 4]
    places = {int(t): p for p, t in enumerate(eng.window[0]) if t < eng.T}
    return eng, places[1], places[2]


def _greedy(eng: Engine, **kw):
    policy = GreedyPolicy(eng.scenario, **kw)
    policy.reset(0)
    return policy.act(build_observations(eng))


@pytest.mark.parametrize("remaining", [1, 2])
def test_greedy_plans_for_the_wait_and_blocks_behind_it(remaining):
    # Control: X seen by cluster 0 only is never deferred; its reservation (10 GPUs from slot
    # `remaining` on) leaves Y no 4-slot run on a GPU before X's end: agent 0 passes.
    eng, x, y = _deferral_engine(remaining, x_wait=1, x_visible=(0,))
    assert _greedy(eng).task[0] == -1


def test_greedy_defers_when_the_delayed_plan_ends_past_the_slack():
    # R ends in 2 slots: X's plan is d = 2, S = 2 (d + S = 4), against 2 slots elsewhere plus
    # defer_slack 1 = 3. 4 > 3: defer X, so Y starts now. (Without the start delay the rule
    # would compare S = 2 <= 3, plan X and pass.)
    eng, x, y = _deferral_engine(remaining=2, x_wait=1)
    act = _greedy(eng)
    assert act.task[0] == y and act.alloc[0].tolist() == [2, 1]
    assert act.task[1] >= 0 and act.alloc[1].tolist() == [2, 10]  # cluster 1 takes X at its best
    # the same situation with a slack of 2: d + S = 4 = elsewhere + slack, not deferred
    assert _greedy(eng, defer_slack=2).task[0] == -1


def test_greedy_does_not_defer_when_the_delayed_plan_ends_exactly_at_the_slack():
    # R ends in 1 slot: X's plan is d = 1, S = 2: d + S = 3 = 2 elsewhere + defer_slack 1. Not
    # more than the slack: X is planned (and reserved), Y cannot start: agent 0 passes.
    eng, x, y = _deferral_engine(remaining=1, x_wait=1)
    assert _greedy(eng).task[0] == -1
    # with no slack at all, 3 > 2: deferred, and Y starts
    assert _greedy(eng, defer_slack=0).task[0] == y


def test_greedy_stops_deferring_after_patience_slots_of_waiting():
    # The deferring situation (d + S = 4 > 3), but X has waited 2 slots = patience: it is
    # planned normally now, and its reservation keeps Y back.
    eng, x, y = _deferral_engine(remaining=2, x_wait=2)
    assert _greedy(eng).task[0] == -1
    assert _greedy(eng, patience=3).task[0] == y  # more patience: still deferred
    eng, x, y = _deferral_engine(remaining=2, x_wait=1)
    assert _greedy(eng, patience=1).task[0] == -1  # waited 1 = patience 1: planned


def test_greedy_compares_with_the_elsewhere_run_of_the_tasks_own_work():
    # X with work 2: elsewhere (16 GPUs) 3 slots; on cluster 0 (9 GPUs, R holding 5 for one more
    # slot) its plan waits d = 1 for all 9 GPUs and runs 5 (now, on 4 GPUs, it would run 11):
    # d + S = 6. At work 1 it would run 2 slots elsewhere.
    eng, x, y = _deferral_engine(remaining=1, x_wait=1, gpus=9, r_gpus=5, x_work=2.0)
    assert _greedy(eng, defer_slack=3).task[0] == -1  # 6 = 3 + 3: planned, Y kept back
    act = _greedy(eng, defer_slack=2)  # 6 > 3 + 2: deferred, Y starts
    assert act.task[0] == y and act.alloc[0].tolist() == [2, 1]


def test_greedy_reservation_covers_its_last_slot():
    # Cluster 0 = (16 CPU, 8 GPU). An IMG R holds 6 GPUs, one slot left; 2 GPUs free now.
    # X, an LM of work 0.5 waiting longer, finishes in 1 slot on all 8 GPUs (5 slots on the 2 free
    # now, 2 slots on 6 or 7): its plan waits one slot and reserves all 8 GPUs for slot 1 (the
    # reservation's first and last slot). Y, a new IMG, needs 1 GPU for 4 slots from now, so it
    # would hold a GPU in slot 1: it must not start. Without X, Y starts now.
    sc = dataclasses.replace(load_scenario("synthetic-3"),
                             clusters=(Cluster("a", ((16, 8),)), Cluster("b", ((16, 16),))))

    def engine(with_x: bool) -> tuple[Engine, int]:
        tasks = [(0, "IMG", [0])] + ([(2, "LM", [0])] if with_x else []) + [(3, "IMG", [0])]
        wl = workload(sc, tasks)
        if with_x:
            wl = dataclasses.replace(wl, work=np.array([1.0, 0.5, 1.0]))
        eng = Engine(sc, strict=True)
        eng.reset(0, workload=wl)
        start(eng, {0: (0, 0, [2, 6])})
        while eng.slot < 3:
            end_slot(eng)
        assert eng.status[0] == RUNNING and eng.node_free[0].tolist() == [14, 2]
        places = {int(t): p for p, t in enumerate(eng.window[0]) if t < eng.T}
        return eng, places[eng.T - 1]

    eng, y = engine(with_x=False)
    act = _greedy(eng)
    assert act.task[0] == y and act.alloc[0].tolist() == [2, 1]
    eng, y = engine(with_x=True)
    assert _greedy(eng).task[0] == -1
    # X's plan is what it claims: it starts in the next slot on all 8 GPUs and is done in one
    end_slot(eng)  # R finishes: all 8 GPUs free
    act = _greedy(eng)
    x = int(np.flatnonzero(eng.window[0] == 1)[0])
    assert act.task[0] == x and act.alloc[0].tolist() == [2, 8]
