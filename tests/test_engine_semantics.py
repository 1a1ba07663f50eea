"""Hand-computed cases of the reference semantics (DESIGN.md, "Reference semantics")."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tapfinger.engine import FINISHED, InvalidActionError, RUNNING
from tests.helpers import end_slot, engine_with, start


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
    realloc[0, 0] = [2, 8]
    eng.play_round(np.full(eng.N, -1), np.zeros(eng.N, dtype=np.int64), np.zeros((eng.N, eng.R), dtype=np.int64),
                   realloc)  # no start: the slot ends with the new allocation
    assert eng.slot == 2
    p2 = p1 + 0.5 * math.tanh(0.5) * math.sqrt(1.2 - p1)
    assert eng.progress[0] == pytest.approx(p2)
    end_slot(eng)  # unchanged allocation: full progress again
    assert eng.progress[0] == pytest.approx(p2 + math.tanh(0.5) * math.sqrt(1.2 - p2)) or eng.status[0] == FINISHED


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


def test_trace_progress_matches_measured_table():
    eng = engine_with("trace-3", [(0, "lm", [0])])
    start(eng, {0: (0, 0, [4, 2])})
    end_slot(eng)
    from tapfinger.progress import read_profile
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
