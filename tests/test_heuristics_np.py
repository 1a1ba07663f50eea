"""Non-preemptive heuristics: fifo, sjf, drf, greedy (agents/heuristics/queue_order.py, greedy.py).

Full episodes in strict mode (an action the masks forbid raises), and small hand-made
instances where the right choice of each heuristic is known.
"""

from __future__ import annotations

import numpy as np
import pytest

from agents.heuristics.estimates import SpeedModel
from agents.registry import make_policy
from envs.observations import build_observations
from tapfinger.engine import Engine
from tapfinger.rollout import run_episode
from tapfinger.scenario import ScenarioError, load_scenario
from tests.helpers import end_slot, engine_with, small, start

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
    _trace_or_skip("trace-3")
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
