"""Hand-computed cases of the reference semantics (DESIGN.md, "Reference semantics")."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tapfinger.sim.engine import FINISHED, InvalidActionError, RUNNING
from tests.helpers import end_slot, engine_with, needs_shared_data, start


def run_to_end(eng, limit=100):
    for _ in range(limit):
        if eng.done:
            return
        end_slot(eng)
    raise AssertionError("episode did not end")


def test_img_alone_takes_exactly_four_slots():
    eng = engine_with("synthetic-3", [(0, "IMG", [0])])
    assert start(eng, {0: (0, 0, [2, 1])}) is False  # a start keeps the slot open
    run_to_end(eng)
    assert eng.task_records()["jct"][0] == 4


@pytest.mark.parametrize("gpus, slots", [(16, 2), (10, 2), (7, 3), (5, 4), (4, 5)])
def test_lm_slots_by_gpus(gpus, slots):
    eng = engine_with("synthetic-3", [(0, "LM", [0])])
    start(eng, {0: (0, 0, [2, gpus])})
    run_to_end(eng)
    assert eng.task_records()["jct"][0] == slots


def test_jct_counts_waiting_slots():
    eng = engine_with("synthetic-3", [(0, "IMG", [0])])
    end_slot(eng)
    end_slot(eng)  # waited two slot ends
    start(eng, {0: (0, 0, [2, 1])})
    run_to_end(eng)
    assert eng.task_records()["jct"][0] == 6


def test_conflict_starts_task_on_one_cluster_only():
    eng = engine_with("synthetic-3", [(0, "IMG", [0, 1])])
    assert eng.window[1, 0] == 0
    start(eng, {0: (0, 0, [2, 1]), 1: (0, 0, [2, 1])})
    assert eng.cluster[0] == 0 and eng.status[0] == RUNNING
    assert eng.num_running.tolist() == [1, 0, 0]
    assert eng.window[1, 0] == eng.empty  # left the other cluster's window
    assert eng.conflicts.tolist() == [0, 1, 0]
    assert eng.invalid_actions.sum() == 0


def test_slot_advances_only_after_a_round_without_start():
    eng = engine_with("synthetic-3", [(0, "IMG", [0]), (0, "IMG", [0])])
    assert start(eng, {0: (0, 0, [2, 1])}) is False
    assert eng.slot == 0 and eng.round == 1
    assert start(eng, {0: (1, 0, [2, 1])}) is False
    assert eng.slot == 0
    end_slot(eng)
    assert eng.slot == 1 and eng.round == 0


def test_task_visible_to_two_clusters_counts_in_both_rewards():
    eng = engine_with("synthetic-3", [(0, "IMG", [0, 2])])
    end_slot(eng)
    assert eng.last_rewards.tolist() == [-1.0, 0.0, -1.0]
    start(eng, {2: (0, 0, [2, 1])})
    end_slot(eng)  # now running on cluster 2 only
    assert eng.last_rewards.tolist() == [0.0, 0.0, -1.0]


def test_finishing_task_still_counts_in_reward_of_its_last_slot():
    eng = engine_with("synthetic-3", [(0, "LM", [0])])
    start(eng, {0: (0, 0, [2, 16])})
    end_slot(eng)
    end_slot(eng)  # finishes at this slot end
    assert eng.status[0] == FINISHED
    assert eng.last_rewards[0] == -1.0


def test_reallocated_task_progresses_by_switch_weight():
    eng = engine_with("synthetic-3", [(0, "LM", [0])])
    assert eng.scenario.switch_weight == 0.5
    start(eng, {0: (0, 0, [2, 16])})
    end_slot(eng)
    p1 = math.tanh(1.0) * math.sqrt(1.2)
    assert eng.progress[0] == pytest.approx(p1)
    realloc = np.full((eng.N, eng.M, eng.R), -1, dtype=np.int64)
    realloc[0, 0] = [2, 2]  # few GPUs, so that the task is still running after the next slot
    eng.play_round(np.full(eng.N, -1), np.zeros(eng.N, dtype=np.int64), np.zeros((eng.N, eng.R), dtype=np.int64),
                   realloc)  # no start: the slot ends with the new allocation
    assert eng.slot == 2
    p2 = p1 + 0.5 * math.tanh(2 / 16) * math.sqrt(1.2 - p1)
    assert eng.progress[0] == pytest.approx(p2)
    end_slot(eng)  # unchanged allocation: full progress again
    p3 = p2 + math.tanh(2 / 16) * math.sqrt(1.2 - p2)
    assert p3 < 1.0  # (about 0.943, against about 0.907 if the penalty applied again)
    assert eng.status[0] == RUNNING
    assert eng.progress[0] == pytest.approx(p3)
    assert eng.switches[0] == 1


def test_paused_task_makes_no_progress_and_frees_resources():
    eng = engine_with("synthetic-3", [(0, "LM", [0])])
    start(eng, {0: (0, 0, [2, 4])})
    end_slot(eng)
    p1 = eng.progress[0]
    realloc = np.full((eng.N, eng.M, eng.R), -1, dtype=np.int64)
    realloc[0, 0] = [0, 0]
    eng.play_round(np.full(eng.N, -1), np.zeros(eng.N, dtype=np.int64), np.zeros((eng.N, eng.R), dtype=np.int64),
                   realloc)
    assert eng.progress[0] == p1
    assert eng.node_free[0].tolist() == [16, 16]


def test_window_overflow_goes_to_queue_and_freed_place_waits_for_slot_end():
    tasks = [(0, "IMG", [0])] * 11
    eng = engine_with("synthetic-3", tasks)
    assert (eng.window[0] != eng.empty).sum() == 10
    assert eng.queue_lengths()[0] == 1
    start(eng, {0: (3, 0, [2, 1])})
    assert eng.window[0, 3] == eng.empty  # stays empty within the slot
    start(eng, {0: (4, 0, [2, 1])})
    assert eng.window[0, 3] == eng.empty
    end_slot(eng)
    assert eng.window[0, 3] == 10  # refilled from the queue at the slot end
    assert eng.queue_lengths()[0] == 0


def test_new_arrivals_take_free_places_before_the_queue_refills():
    tasks = [(0, "IMG", [0])] * 11 + [(1, "LM", [0])]
    eng = engine_with("synthetic-3", tasks)
    start(eng, {0: (0, 0, [2, 1])})
    end_slot(eng)
    assert eng.window[0, 0] == 11  # the new arrival took the first free place
    assert eng.queue_lengths()[0] == 1


def test_started_task_leaves_other_queues():
    tasks = [(0, "IMG", [0])] * 10 + [(0, "LM", [0, 1])]
    eng = engine_with("synthetic-3", tasks)
    assert eng.queue_lengths().tolist() == [1, 0, 0]
    start(eng, {1: (0, 0, [2, 16])})  # task 10 is alone in cluster 1's window
    assert eng.queue_lengths().tolist() == [0, 0, 0]
    start(eng, {0: (0, 0, [2, 1])})
    end_slot(eng)
    assert 10 not in eng.window[0]


def test_below_minimum_is_invalid_and_strict_mode_raises():
    eng = engine_with("synthetic-3", [(0, "IMG", [0])])
    with pytest.raises(InvalidActionError, match="below the task type's minimum"):
        start(eng, {0: (0, 0, [1, 1])})
    eng = engine_with("synthetic-3", [(0, "IMG", [0])], strict=False)
    start(eng, {0: (0, 0, [1, 1])})
    assert eng.invalid_actions[0] == 1 and eng.num_running.sum() == 0


@pytest.mark.parametrize("action, message", [
    ((5, 0, [2, 1]), "window place 5 is empty"),
    ((10, 0, [2, 1]), "outside"),
    ((0, 3, [2, 1]), "node 3 is outside"),
    ((0, 0, [2, 17]), "exceeds the grid maximum"),
])
def test_each_invalid_start_is_named(action, message):
    eng = engine_with("synthetic-3", [(0, "IMG", [0])])
    with pytest.raises(InvalidActionError, match=message):
        start(eng, {0: action})


def test_allocation_over_free_is_invalid():
    eng = engine_with("synthetic-3", [(0, "LM", [0]), (0, "LM", [0])])
    start(eng, {0: (0, 0, [2, 16])})
    with pytest.raises(InvalidActionError, match="exceeds node 0's free"):
        start(eng, {0: (1, 0, [2, 1])})


def test_preemption_refused_when_scenario_forbids_it():
    eng = engine_with("synthetic-3", [(0, "LM", [0])], allow_preemption=False)
    start(eng, {0: (0, 0, [2, 4])})
    realloc = np.full((eng.N, eng.M, eng.R), -1, dtype=np.int64)
    realloc[0, 0] = [2, 8]
    with pytest.raises(InvalidActionError, match="does not allow preemption"):
        eng.play_round(np.full(eng.N, -1), np.zeros(eng.N, dtype=np.int64),
                       np.zeros((eng.N, eng.R), dtype=np.int64), realloc)


@needs_shared_data("trace-3")
def test_trace_progress_matches_measured_table():
    eng = engine_with("trace-3", [(0, "lm", [0])])
    start(eng, {0: (0, 0, [4, 2])})
    end_slot(eng)
    from tapfinger.sim.progress import read_profile
    t = read_profile(eng.scenario.profile).lookup("lm", 4, 2)
    assert eng.progress[0] == pytest.approx(5.0 / (t + 14.0))


def test_task_started_and_reallocated_in_the_same_slot_is_not_switched():
    eng = engine_with("synthetic-3", [(0, "LM", [0])])
    start(eng, {0: (0, 0, [2, 16])})
    realloc = np.full((eng.N, eng.M, eng.R), -1, dtype=np.int64)
    realloc[0, 0] = [2, 8]
    eng.play_round(np.full(eng.N, -1), np.zeros(eng.N, dtype=np.int64), np.zeros((eng.N, eng.R), dtype=np.int64),
                   realloc)  # slot ends: first slot end of the task, with the new allocation
    assert eng.progress[0] == pytest.approx(math.tanh(0.5) * math.sqrt(1.2))


def lm_step(p: float, gpus: int, weight: float = 1.0) -> float:
    """DESIGN.md: LM progresses by tanh(g / 16) * sqrt(1.2 - p) per slot (x switch_weight)."""
    return p + weight * math.tanh(gpus / 16) * math.sqrt(1.2 - p)


def realloc_round(eng, rows: dict[int, list[int]], starts: dict | None = None) -> bool:
    """One round that re-allocates cluster 0's running places `rows` (place -> allocation)."""
    realloc = np.full((eng.N, eng.M, eng.R), -1, dtype=np.int64)
    for place, a in rows.items():
        realloc[0, place] = a
    return start(eng, starts or {}, realloc=realloc)


def test_switch_penalty_applies_only_at_the_slot_end_where_the_allocation_changed():
    # One LM on few GPUs (so it runs for many slots); switch_weight 0.5 in synthetic-3. A slot end
    # is a switch exactly when the allocation differs from the previous slot end's, however it got
    # there; every other slot end gives the full amount.
    eng = engine_with("synthetic-3", [(0, "LM", [0]), (6, "IMG", [0])])
    assert eng.scenario.switch_weight == 0.5
    p, switches = 0.0, 0

    def slot_end(gpus: int, switched: bool):
        nonlocal p, switches
        p = lm_step(p, gpus, 0.5 if switched else 1.0)
        switches += switched
        assert eng.progress[0] == pytest.approx(p, rel=1e-12), f"slot {eng.slot - 1}"
        assert eng.switches[0] == switches, f"slot {eng.slot - 1}"
        assert eng.status[0] == RUNNING and eng.alloc[0, 1] == gpus

    start(eng, {0: (0, 0, [2, 1])})
    end_slot(eng)
    slot_end(1, False)  # slot 0: a fresh start is not a switch
    end_slot(eng)
    slot_end(1, False)  # slot 1: unchanged
    assert realloc_round(eng, {0: [2, 2]}) is True
    slot_end(2, True)  # slot 2: 1 -> 2 GPUs, half the progress
    end_slot(eng)
    slot_end(2, False)  # slot 3: the penalty does not persist
    end_slot(eng)
    slot_end(2, False)  # slot 4
    assert realloc_round(eng, {0: [2, 2]}) is True
    slot_end(2, False)  # slot 5: a re-allocation to the same amounts is no switch
    # slot 6: up to 8 GPUs while another task starts, back to 2 in the next round: at the slot
    # end the allocation equals the previous slot end's, so no switch
    assert eng.slot == 6 and eng.window[0, 0] == 1
    assert realloc_round(eng, {0: [2, 8]}, starts={0: (0, 0, [2, 1])}) is False
    assert eng.alloc[0].tolist() == [2, 8] and eng.node_free[0].tolist() == [12, 7]
    assert realloc_round(eng, {0: [2, 2]}) is True
    slot_end(2, False)
    assert eng.progress[1] == pytest.approx(0.25) and eng.switches[1] == 0
    assert realloc_round(eng, {0: [2, 1]}) is True
    slot_end(1, True)  # slot 7: 2 -> 1 GPU, half the progress again
    end_slot(eng)
    slot_end(1, False)  # slot 8
    assert switches == 2
    assert eng.task_records()["switches"].tolist() == [2, 0]
    assert eng.node_free[0].tolist() == [16 - 2 - 2, 16 - 1 - 1]


# ----------------------------------------------------------------------------- round counts, realloc rows, records


def test_rounds_total_counts_every_round_played_and_run_episode_reports_them():
    eng = engine_with("synthetic-3", [(0, "IMG", [0]), (0, "IMG", [0])])
    start(eng, {0: (0, 0, [2, 1])})  # round 1 (a start)
    start(eng, {0: (1, 0, [2, 1])})  # round 2 (a start)
    end_slot(eng)  # round 3 ends slot 0
    end_slot(eng)  # round 4 ends slot 1
    assert eng.rounds_total == 4 and eng.slot == 2

    from agents.registry import make_policy
    from envs.episode import run_episode
    from tests.helpers import workload

    sc = eng.scenario
    seen = {"rounds": 0, "slot_ends": 0}

    def on_round(info):
        seen["rounds"] += 1
        seen["slot_ends"] += bool(info.slot_ended)

    wl = workload(sc, [(0, "IMG", [0]), (0, "LM", [0, 1]), (1, "IMG", [2])])
    res = run_episode(sc, make_policy("fifo", sc), seed=0, workload=wl, on_round=on_round)
    assert seen["rounds"] > seen["slot_ends"] > 0  # some rounds started tasks, some ended slots
    assert res.rounds == seen["rounds"]
    assert res.decisions == seen["rounds"] * sc.num_clusters
    assert res.slots == seen["slot_ends"]


def test_all_minus_one_realloc_is_no_action_even_without_preemption():
    eng = engine_with("synthetic-3", [(0, "IMG", [0])], strict=False, allow_preemption=False)
    keep = np.full((eng.N, eng.M, eng.R), -1, dtype=np.int64)  # nobody re-allocates
    assert start(eng, {0: (0, 0, [2, 1])}, realloc=keep) is False
    assert eng.invalid_actions.tolist() == [0, 0, 0]
    assert eng.status[0] == RUNNING and eng.alloc[0].tolist() == [2, 1]
    end_slot(eng)  # slot 0 ends (no realloc array at all)
    assert eng.play_round(np.full(eng.N, -1), np.zeros(eng.N, dtype=np.int64),
                          np.zeros((eng.N, eng.R), dtype=np.int64), keep) is True
    assert eng.invalid_actions.sum() == 0


def test_realloc_row_of_a_running_task_is_applied():
    # synthetic-3 (preemption allowed): cluster 0 runs one LM in running place 0; the other places
    # are empty (-1 rows), cluster 0's place-0 row gives every resource.
    eng = engine_with("synthetic-3", [(0, "LM", [0])])
    start(eng, {0: (0, 0, [2, 4])})
    assert eng.M > 1
    realloc = np.full((eng.N, eng.M, eng.R), -1, dtype=np.int64)
    realloc[0, 0] = [3, 9]
    assert eng.play_round(np.full(eng.N, -1), np.zeros(eng.N, dtype=np.int64),
                          np.zeros((eng.N, eng.R), dtype=np.int64), realloc) is True
    assert eng.alloc[0].tolist() == [3, 9] and eng.node_free[0].tolist() == [13, 7]


def test_realloc_applied_when_the_row_has_no_keep_entries_at_all():
    # Every node (2 CPU, 2 GPU) holds one task of minimum (2, 1), so each cluster has a single
    # running place: a re-allocation row of a running task has no -1 anywhere.
    import dataclasses

    from tapfinger.sim.scenario import Cluster, load_scenario
    from tapfinger.sim.engine import Engine
    from tests.helpers import workload

    sc = dataclasses.replace(load_scenario("synthetic-3"),
                             clusters=(Cluster("a", ((2, 2),)), Cluster("b", ((2, 2),))))
    eng = Engine(sc, strict=True)
    eng.reset(0, workload=workload(sc, [(0, "LM", [0])]))
    assert eng.M == 1
    start(eng, {0: (0, 0, [2, 1])})
    realloc = np.full((eng.N, eng.M, eng.R), -1, dtype=np.int64)
    realloc[0, 0] = [2, 2]
    assert start(eng, {}, realloc=realloc) is True
    assert eng.alloc[0].tolist() == [2, 2] and eng.node_free[0].tolist() == [0, 0]
    assert eng.invalid_actions.sum() == 0


def test_task_records_have_one_row_per_task():
    eng = engine_with("synthetic-3", [(0, "IMG", [0]), (0, "LM", [1]), (2, "IMG", [0, 2])])
    start(eng, {0: (0, 0, [2, 1]), 1: (0, 0, [2, 16])})
    end_slot(eng)
    rec = eng.task_records()
    assert set(rec) >= {"task", "type", "arrival", "start", "finish", "cluster", "node", "alloc", "jct",
                        "switches", "deadline"}
    for name, col in rec.items():
        assert col.shape[0] == 3, name
    assert rec["alloc"].tolist() == [[2, 1], [2, 16], [0, 0]]
