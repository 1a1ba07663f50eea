"""Metrics of one episode and statistics across seeds (tapfinger/evaluation/metrics.py, evaluation.summarise),
on hand-made inputs whose right answers are computed by hand (or by scipy in the test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from tapfinger.evaluation.harness import EvalConfig, is_heuristic, summarise
from tapfinger.evaluation.metrics import EpisodeMetrics, episode_metrics, mean_ci, summary
from envs.episode import EpisodeResult
from tapfinger.sim.scenario import load_scenario


def hand_result(jct, finish, busy, decisions=120, decide_seconds=0.5, seed=7, invalid=0, truncated=False):
    jct, finish = np.asarray(jct, dtype=np.int64), np.asarray(finish, dtype=np.int64)
    return EpisodeResult(seed=seed, records={"jct": jct, "finish": finish}, slots=len(busy), rounds=decisions // 2,
                         decisions=decisions, decide_seconds=decide_seconds, truncated=truncated,
                         invalid_actions=invalid, in_system=np.arange(len(busy)),
                         busy=np.asarray(busy, dtype=np.int64).reshape(-1, 2))


# ----------------------------------------------------------------------------- one episode


def test_episode_metrics_by_hand():
    # Six tasks, the fifth unfinished. The last finish is task 3's slot 11 (not the last task's,
    # and not the largest JCT's), so the makespan is 12 slots.
    jct = [3, 1, 7, 10, -1, 4]
    finish = [2, 0, 9, 11, -1, 5]
    # busy over 12 slots: cpu 5 for six slots then 10 for six (mean 7.5 of 10), gpu 2 throughout
    # (mean 2 of 4); three more rows after the makespan that must not count.
    busy = [[5, 2]] * 6 + [[10, 2]] * 6 + [[10, 4]] * 3
    m = episode_metrics(hand_result(jct, finish, busy), ("cpu", "gpu"), np.array([10, 4]))
    # finished JCTs sorted: 1 3 4 7 10 (n = 5); numpy's linear percentile at rank q/100 * 4:
    # p50 -> rank 2 -> 4; p95 -> rank 3.8 -> 7 + 0.8 * 3 = 9.4; p99 -> rank 3.96 -> 7 + 0.96 * 3 = 9.88
    assert m.avg_jct == pytest.approx(25 / 5)
    assert m.p50_jct == pytest.approx(4.0)
    assert m.p95_jct == pytest.approx(9.4)
    assert m.p99_jct == pytest.approx(9.88)
    assert m.unfinished == 1
    assert m.makespan == 12
    assert m.utilisation == pytest.approx({"cpu": 0.75, "gpu": 0.5})
    assert m.decisions_per_s == pytest.approx(240.0)  # 120 decisions in 0.5 s
    assert m.seed == 7 and m.invalid_actions == 0 and not m.truncated
    s = m.scalars()
    assert s["avg_jct"] == pytest.approx(5.0) and s["makespan"] == 12.0
    assert s["util_cpu"] == pytest.approx(0.75) and s["util_gpu"] == pytest.approx(0.5)


def test_episode_metrics_even_count_percentiles_and_counts():
    # Four finished: 2 2 6 12 -> p50 at rank 1.5 = 4; p95 at rank 2.85 = 6 + 0.85 * 6 = 11.1;
    # p99 at rank 2.97 = 6 + 0.97 * 6 = 11.82. Two unfinished. One slot fully busy, one idle.
    m = episode_metrics(hand_result([12, -1, 2, 6, -1, 2], [1, -1, 0, 1, -1, 0], [[8, 0], [0, 4]],
                                    invalid=3, truncated=True),
                        ("cpu", "gpu"), np.array([8, 4]))
    assert (m.p50_jct, m.p95_jct, m.p99_jct) == pytest.approx((4.0, 11.1, 11.82))
    assert m.avg_jct == pytest.approx(22 / 4)
    assert m.unfinished == 2 and m.makespan == 2
    assert m.utilisation == pytest.approx({"cpu": 0.5, "gpu": 0.5})
    assert m.invalid_actions == 3 and m.truncated


def test_episode_metrics_with_nothing_finished():
    m = episode_metrics(hand_result([-1, -1], [-1, -1], [[1, 1]] * 3, decide_seconds=0.0), ("cpu", "gpu"),
                        np.array([2, 2]))
    assert math.isnan(m.avg_jct) and math.isnan(m.p50_jct)
    assert m.unfinished == 2 and m.makespan == 0
    assert m.decisions_per_s == float("inf")


# ----------------------------------------------------------------------------- mean and CI


def t_interval(x, level=0.95):
    x = np.asarray(x, dtype=np.float64)
    n = x.size
    half = stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / np.sqrt(n)
    return x.mean(), x.mean() - half, x.mean() + half


def test_mean_ci_against_scipy():
    x = [3.0, 5.5, 4.0, 7.25, 6.0]
    assert mean_ci(x) == pytest.approx(t_interval(x))
    assert mean_ci(x, level=0.9) == pytest.approx(t_interval(x, 0.9))
    # two values 1 and 3: mean 2, sd sqrt(2), t(0.975, 1) = 12.7062: half-width 12.7062
    m, lo, hi = mean_ci([1.0, float("nan"), 3.0])  # non-finite values are left out
    assert m == 2.0 and lo == pytest.approx(2 - 12.7062, abs=1e-4) and hi == pytest.approx(2 + 12.7062, abs=1e-4)
    assert mean_ci([4.0]) == (4.0, 4.0, 4.0)
    assert all(math.isnan(v) for v in mean_ci([]))
    s = summary([1.0, 2.0, 4.0])
    assert s["mean"] == pytest.approx(7 / 3) and s["per_seed"] == [1.0, 2.0, 4.0]
    assert s["ci95"] == pytest.approx(list(t_interval([1.0, 2.0, 4.0])[1:]))


# ----------------------------------------------------------------------------- across seeds


def metrics(seed, avg, util=0.5, invalid=0, unfinished=0, truncated=False):
    return EpisodeMetrics(seed=seed, avg_jct=avg, p50_jct=avg - 1, p95_jct=avg + 1, p99_jct=avg + 2,
                          makespan=int(10 * avg), utilisation={"cpu": util, "gpu": util / 2},
                          decisions_per_s=100.0 * seed, invalid_actions=invalid, truncated=truncated,
                          unfinished=unfinished, jct=np.array([1]), in_system=np.array([1]))


SEEDS = [4, 1, 3, 2]
# Avg JCT per seed, in SEEDS order. greedy is the best heuristic (mean 4.5) and fifo is worse on
# every seed by a nearly constant amount: the paired interval is narrow and clear of zero while
# the two unpaired intervals overlap. tapfinger (a learned policy) has the lowest mean of all and
# must not become the "best heuristic".
AVG = {
    "fifo": [3.5, 5.7, 4.6, 6.4],
    "greedy": [3.0, 5.0, 4.0, 6.0],
    "tapfinger": [2.0, 4.5, 3.0, 5.0],
    "onnx:exported.onnx": [1.0, 1.0, 1.0, 1.0],
}


def hand_summary():
    sc = load_scenario("hetero-6")
    cfg = EvalConfig(sc, list(AVG), SEEDS, progress=False)
    per_policy = {}
    for n, values in AVG.items():
        # inserted in another order than cfg.seeds (the worker pool returns episodes unordered)
        eps = {s: metrics(s, v, util=0.1 * (i + 1), invalid=i, unfinished=i % 2, truncated=i == 0)
               for i, (s, v) in enumerate(zip(SEEDS, values))}
        per_policy[n] = {s: eps[s] for s in sorted(eps, reverse=True)}
    bounds = {s: b for s, b in zip(sorted(SEEDS), [2.5, 2.0, 2.25, 2.75])}  # seed 1 -> 2.5, ...
    return summarise(cfg, per_policy, bounds)


def test_best_heuristic_is_the_lowest_mean_among_heuristics_only():
    assert not is_heuristic("tapfinger") and not is_heuristic("onnx:exported.onnx")
    assert is_heuristic("greedy") and is_heuristic("fifo")
    res = hand_summary()
    assert res["best_heuristic"] == "greedy"


def test_diff_vs_best_is_policy_minus_best_per_seed_with_a_paired_t_interval():
    res = hand_summary()
    pol = res["policies"]
    diff = np.array(AVG["fifo"]) - np.array(AVG["greedy"])  # 0.5 0.7 0.6 0.4: fifo is worse
    d = pol["fifo"]["diff_vs_best"]
    assert d["per_seed"] == pytest.approx(diff.tolist())
    m, lo, hi = t_interval(diff)
    assert d["mean"] == pytest.approx(0.55) and d["mean"] > 0  # worse than the best: positive
    assert d["ci95"] == pytest.approx([lo, hi])
    assert 0 < d["ci95"][0]  # paired: clear of zero ...
    fifo_ci, greedy_ci = pol["fifo"]["avg_jct"]["ci95"], pol["greedy"]["avg_jct"]["ci95"]
    assert fifo_ci[0] < greedy_ci[1]  # ... although the unpaired intervals overlap
    assert pol["greedy"]["diff_vs_best"]["per_seed"] == [0.0] * 4
    assert pol["greedy"]["diff_vs_best"]["ci95"] == [0.0, 0.0]
    t = pol["tapfinger"]["diff_vs_best"]  # better than the best heuristic: negative
    assert t["per_seed"] == pytest.approx([-1.0, -0.5, -1.0, -1.0])
    assert t["mean"] == pytest.approx(-0.875)
    assert t["ci95"] == pytest.approx(list(t_interval([-1.0, -0.5, -1.0, -1.0])[1:]))


def test_summarise_keeps_seed_order_and_aggregates_counts():
    res = hand_summary()
    assert res["seeds"] == SEEDS and res["scenario"] == "hetero-6"
    pol = res["policies"]
    for n, values in AVG.items():
        e = pol[n]
        assert e["avg_jct"]["per_seed"] == values  # in cfg.seeds order, not insertion order
        assert e["avg_jct"]["mean"] == pytest.approx(np.mean(values))
        assert e["avg_jct"]["ci95"] == pytest.approx(list(t_interval(values)[1:]))
        assert e["p95_jct"]["per_seed"] == pytest.approx([v + 1 for v in values])
        assert e["makespan"]["per_seed"] == pytest.approx([float(int(10 * v)) for v in values])
        assert e["decisions_per_s"]["per_seed"] == pytest.approx([100.0 * s for s in SEEDS])
        assert e["utilisation"]["cpu"]["per_seed"] == pytest.approx([0.1, 0.2, 0.3, 0.4])
        assert e["utilisation"]["gpu"]["per_seed"] == pytest.approx([0.05, 0.1, 0.15, 0.2])
        assert e["invalid_actions"] == 0 + 1 + 2 + 3
        assert e["unfinished_tasks"] == 2 and e["truncated_episodes"] == 1
    assert pol["bound"]["avg_jct"]["per_seed"] == [2.75, 2.5, 2.25, 2.0]  # seeds 4, 1, 3, 2


def test_summarise_without_heuristics_has_no_best_and_no_diff():
    sc = load_scenario("hetero-6")
    cfg = EvalConfig(sc, ["tapfinger"], [0, 1], progress=False)
    res = summarise(cfg, {"tapfinger": {0: metrics(0, 3.0), 1: metrics(1, 4.0)}}, {0: 2.0, 1: 2.0})
    assert res["best_heuristic"] is None and "diff_vs_best" not in res["policies"]["tapfinger"]


def test_makespan_counts_a_finish_at_slot_zero():
    # The only finished task finishes at the end of slot 0: the makespan is one slot, and the
    # utilisation is over that slot only (cpu 4 of 8 then, 8 of 8 in the later slot).
    m = episode_metrics(hand_result([1, -1], [0, -1], [[4, 2], [8, 4]]), ("cpu", "gpu"), np.array([8, 4]))
    assert m.makespan == 1
    assert m.utilisation == pytest.approx({"cpu": 0.5, "gpu": 0.5})


def test_utilisation_of_a_resource_of_capacity_one():
    # A gpu of capacity 1 busy in both slots is fully used; the cpu (capacity 4) half.
    m = episode_metrics(hand_result([2], [1], [[2, 1], [2, 1]]), ("cpu", "gpu"), np.array([4, 1]))
    assert m.utilisation == pytest.approx({"cpu": 0.5, "gpu": 1.0})
