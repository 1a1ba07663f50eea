"""Deadline metrics (issue 14): EpisodeResult's declined/unfinished bookkeeping, episode_metrics'
deadline ratio / declined / lateness, and how the harness, results.json, the table and the plots
carry them. Every case is built from hand-made records, with its answer worked out by hand."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from envs.episode import EpisodeResult
from tapfinger.evaluation.episode_cache import _decode, _encode
from tapfinger.evaluation.harness import EvalConfig, format_table, summarise, write_results
from tapfinger.evaluation.metrics import EpisodeMetrics, deadline_outcomes, episode_metrics

# Eight tasks, all arrived at slot 0 (so jct = finish + 1 for a finished task):
#   0: deadline 5, finished in slot 3           -> met
#   1: deadline 5, finished in slot 4           -> met (finish < deadline: done by the end of slot 4)
#   2: deadline 5, finished in slot 5           -> late by 5 + 1 - 5 = 1
#   3: deadline 2, finished in slot 6           -> late by 6 + 1 - 2 = 5
#   4: deadline 8, declined                     -> missed
#   5: deadline 9, unfinished (truncated)       -> missed
#   6: best effort, finished in slot 2          -> not in the ratio
#   7: best effort, declined                    -> declined, not in the ratio
# 6 tasks with a deadline, 2 met: ratio 1/3; lateness (1 + 5) / 2 = 3; 2 declined; 1 unfinished.
FINISH = [3, 4, 5, 6, -1, -1, 2, -1]
DEADLINE = [5, 5, 5, 2, 8, 9, -1, -1]
DECLINED = [False, False, False, False, True, False, False, True]
MET = [True, True, False, False, False, False, False, False]
LATENESS = [-1, -1, 1, 5, -1, -1, -1, -1]


def records(engine_keys: bool = True, has_declined: bool = True, has_deadline: bool = True, **override) -> dict:
    """The records above (or with `override`n columns); the flags leave out the keys an older
    engine did not write."""
    finish = np.array(override.get("finish", FINISH), dtype=np.int64)
    rec = {"finish": finish, "jct": np.where(finish >= 0, finish + 1, -1)}
    if has_deadline:
        rec["deadline"] = np.array(override.get("deadline", DEADLINE), dtype=np.int64)
    if has_declined:
        rec["declined"] = np.array(override.get("declined", DECLINED), dtype=bool)
    if engine_keys:
        rec["met"] = np.array(override.get("met", MET), dtype=bool)
        rec["lateness"] = np.array(override.get("lateness", LATENESS), dtype=np.int64)
    return rec


def result(rec: dict, seed: int = 3) -> EpisodeResult:
    slots = 8
    return EpisodeResult(seed=seed, records=rec, slots=slots, rounds=slots, decisions=2 * slots, decide_seconds=0.1,
                         truncated=True, invalid_actions=0, in_system=np.zeros(slots, dtype=np.int64),
                         busy=np.ones((slots, 2), dtype=np.int64))


def metrics_of(rec: dict) -> EpisodeMetrics:
    return episode_metrics(result(rec), ("cpu", "gpu"), np.array([4, 2]))


# ----------------------------------------------------------------------------- one episode


@pytest.mark.parametrize("engine_keys", [True, False], ids=["engine-records", "computed-from-finish"])
def test_mixed_episode_by_hand(engine_keys):
    rec = records(engine_keys=engine_keys)
    r = result(rec)
    assert r.declined == 2
    assert r.unfinished == 1  # task 5 only: the declined tasks 4 and 7 are accounted for
    # every task exactly once: finished, declined or unfinished
    assert int(r.finished.sum()) + r.declined + r.unfinished == len(FINISH)
    m = metrics_of(rec)
    assert m.deadline_tasks == 6
    assert m.deadline_ratio == pytest.approx(2 / 6)
    assert m.declined == 2 and m.unfinished == 1
    assert m.lateness == pytest.approx(3.0)
    assert m.has_deadlines
    assert m.avg_jct == pytest.approx((4 + 5 + 6 + 7 + 3) / 5)  # finished tasks only, unchanged
    has, met, late = deadline_outcomes(rec)
    assert has.tolist() == [d >= 0 for d in DEADLINE] and met.tolist() == MET and late.tolist() == LATENESS


def test_the_engines_met_and_lateness_are_what_is_counted():
    # If the engine says a task met its deadline (its own rule), that is what the ratio counts.
    rec = records(met=[True] * 4 + [False] * 4, lateness=[-1, -1, -1, 2, -1, -1, -1, -1])
    m = metrics_of(rec)
    assert m.deadline_ratio == pytest.approx(4 / 6) and m.lateness == pytest.approx(2.0)


def test_a_declined_task_never_counts_as_met_or_late():
    # Inconsistent records (a declined task with a finish slot) cannot make a declined task count.
    rec = records(engine_keys=False, finish=[3, 4, 5, 6, 1, -1, 2, -1])
    m = metrics_of(rec)
    assert m.deadline_ratio == pytest.approx(2 / 6) and m.lateness == pytest.approx(3.0)


def test_records_of_older_engines_have_no_declined_and_no_deadlines():
    rec = records(engine_keys=False, has_declined=False, has_deadline=False)
    r = result(rec)
    assert r.declined == 0 and r.unfinished == 3  # tasks 4, 5 and 7 are simply unfinished
    m = metrics_of(rec)
    assert m.deadline_tasks == 0 and m.declined == 0 and m.unfinished == 3
    assert math.isnan(m.deadline_ratio) and math.isnan(m.lateness)
    assert not m.has_deadlines


def test_deadline_key_without_declined_key():
    # Deadlines from the workload, but an engine without declining: tasks 4 and 7 are unfinished.
    rec = records(engine_keys=False, has_declined=False)
    r = result(rec)
    assert r.declined == 0 and r.unfinished == 3
    m = metrics_of(rec)
    assert m.deadline_ratio == pytest.approx(2 / 6) and m.lateness == pytest.approx(3.0)


def test_nan_cases():
    # Only best-effort tasks (deadline -1 everywhere), nothing declined: nothing to measure.
    m = metrics_of(records(deadline=[-1] * 8, declined=[False] * 8, met=[False] * 8, lateness=[-1] * 8))
    assert m.deadline_tasks == 0 and math.isnan(m.deadline_ratio) and math.isnan(m.lateness)
    assert not m.has_deadlines
    # Best-effort tasks with one declined: the deadline metrics apply (declined), the ratio is nan.
    m = metrics_of(records(engine_keys=False, deadline=[-1] * 8, declined=[False] * 7 + [True]))
    assert m.has_deadlines and m.declined == 1 and math.isnan(m.deadline_ratio)
    # Every deadline met: ratio 1, no late task, so no lateness.
    m = metrics_of(records(engine_keys=False, finish=[1, 2, 3, 4, -1, -1, 2, -1],
                           deadline=[5, 5, 5, 5, -1, -1, -1, -1], declined=[False] * 8))
    assert m.deadline_tasks == 4 and m.deadline_ratio == 1.0 and math.isnan(m.lateness)
    # Every deadline task declined: ratio 0.
    m = metrics_of(records(engine_keys=False, finish=[-1] * 8, deadline=[3] * 8, declined=[True] * 8))
    assert m.deadline_ratio == 0.0 and m.declined == 8 and m.unfinished == 0 and math.isnan(m.lateness)


def test_the_episode_cache_keeps_the_deadline_metrics():
    m = metrics_of(records())
    back = _decode(json.loads(json.dumps(_encode(m))))
    assert (back.deadline_tasks, back.declined) == (6, 2)
    assert back.deadline_ratio == pytest.approx(1 / 3) and back.lateness == pytest.approx(3.0)


# ----------------------------------------------------------------------------- across seeds

SEEDS = [1, 2]


def fake(seed: int, avg: float, ratio: float = float("nan"), declined: int = 0, lateness: float = float("nan"),
         deadline_tasks: int = 0) -> EpisodeMetrics:
    return EpisodeMetrics(seed=seed, avg_jct=avg, p50_jct=avg, p95_jct=avg, p99_jct=avg, makespan=10,
                          utilisation={"cpu": 0.5, "gpu": 0.25}, decisions_per_s=100.0, invalid_actions=0,
                          truncated=False, unfinished=0, jct=np.array([2, 3, 4]), in_system=np.array([2, 1, 0]),
                          deadline_tasks=deadline_tasks, deadline_ratio=ratio, declined=declined, lateness=lateness)


def with_deadlines() -> dict:
    # min: ratios 0.5, 1.0 (mean 0.75), declined 2, 0, lateness 3 then none late.
    # fifo: ratios 0.25, 0.75 (mean 0.5), declined none, lateness 1, 2. Avg JCT: min 4.5, fifo 5.
    return {"min": {1: fake(1, 4.0, 0.5, 2, 3.0, 4), 2: fake(2, 5.0, 1.0, 0, float("nan"), 4)},
            "fifo": {2: fake(2, 7.0, 0.75, 0, 2.0, 4), 1: fake(1, 3.0, 0.25, 0, 1.0, 4)}}


def evaluation(per: dict) -> dict:
    # summarise reads only the scenario's name and resources: a stand-in keeps these tests off the
    # scenario loader.
    scenario = SimpleNamespace(name="hand-made", resources=("cpu", "gpu"))
    cfg = EvalConfig(scenario, ["min", "fifo"], SEEDS, progress=False)
    return summarise(cfg, per, {1: 1.0, 2: 1.0})


def refuse(constant):
    raise AssertionError(f"not strict JSON: {constant}")


def test_summarise_and_results_json_with_deadlines(tmp_path):
    res = evaluation(with_deadlines())
    m, f = res["policies"]["min"], res["policies"]["fifo"]
    assert m["deadline_ratio"]["per_seed"] == [0.5, 1.0] and m["deadline_ratio"]["mean"] == pytest.approx(0.75)
    assert f["deadline_ratio"]["per_seed"] == [0.25, 0.75]  # seed order, not the order the episodes came in
    assert m["declined"]["per_seed"] == [2.0, 0.0] and m["declined"]["mean"] == 1.0
    assert f["declined"]["mean"] == 0.0
    assert m["lateness"]["mean"] == 3.0 and math.isnan(m["lateness"]["per_seed"][1])  # the mean skips nan
    assert f["lateness"]["mean"] == pytest.approx(1.5)
    for key in ("deadline_ratio", "declined", "lateness"):
        assert set(m[key]) == {"mean", "ci95", "per_seed"}
    assert set(res["policies"]["bound"]) == {"avg_jct"}
    data = json.loads(write_results(res, tmp_path).read_text(), parse_constant=refuse)
    assert data["policies"]["min"]["lateness"]["per_seed"] == [3.0, None]
    assert "policies.min.lateness.per_seed[1]" in data["nulls"]["fields"]
    assert data["policies"]["fifo"]["deadline_ratio"]["mean"] == 0.5


def test_without_deadlines_the_keys_are_exactly_the_old_ones(tmp_path):
    per = {n: {s: fake(s, 4.0 + s + i) for s in SEEDS} for i, n in enumerate(["min", "fifo"])}
    res = evaluation(per)
    old = {"avg_jct", "p50_jct", "p95_jct", "p99_jct", "makespan", "decisions_per_s", "utilisation", "diff_vs_best",
           "invalid_actions", "unfinished_tasks", "truncated_episodes"}
    assert set(res["policies"]["min"]) == old and set(res["policies"]["fifo"]) == old
    data = json.loads(write_results(res, tmp_path).read_text(), parse_constant=refuse)
    assert "deadline_ratio" not in data["policies"]["min"]
    table = format_table(res)
    assert "deadline %" not in table and "late by" not in table


def test_one_decline_anywhere_gives_every_policy_the_deadline_keys():
    per = {n: {s: fake(s, 4.0 + s) for s in SEEDS} for n in ["min", "fifo"]}
    per["fifo"][2] = fake(2, 6.0, declined=1)
    res = evaluation(per)
    assert res["policies"]["min"]["declined"]["per_seed"] == [0.0, 0.0]
    assert res["policies"]["fifo"]["declined"]["per_seed"] == [0.0, 1.0]
    assert math.isnan(res["policies"]["min"]["deadline_ratio"]["mean"])
    table = format_table(res)  # no ratio anywhere: shown as "-", not "nan"
    assert "deadline %" in table and "nan [" not in table


def test_format_table_with_deadlines():
    res = evaluation(with_deadlines())
    lines = format_table(res).splitlines()
    assert "deadline % (95% CI)" in lines[1] and "declined" in lines[1] and "late by" in lines[1]
    rows = {ln.split()[0]: ln for ln in lines[3:]}
    assert list(rows)[:2] == ["min", "fifo"]  # by avg JCT (4.5, 5)
    assert " 75.0 [" in rows["min"] and " 50.0 [" in rows["fifo"]
    m_cells = rows["min"].split("]")[2].split()  # after the two CIs: declined, late by, p50 ...
    assert m_cells[:2] == ["1.0", "3.0"]
    f_cells = rows["fifo"].split("]")[2].split()
    assert f_cells[:2] == ["0.0", "1.5"]


def test_the_table_stays_sorted_by_avg_jct():
    per = with_deadlines()
    per["fifo"] = {s: fake(s, 2.0, 0.9, 0, 1.0, 4) for s in SEEDS}  # lower JCT and the higher ratio
    lines = format_table(evaluation(per)).splitlines()
    assert [ln.split()[0] for ln in lines[3:5]] == ["fifo", "min"]


# ----------------------------------------------------------------------------- plots


def test_deadline_plot_written_best_first(tmp_path, monkeypatch):
    from PIL import Image

    from tapfinger.evaluation import plots

    seen = {}
    save = plots._save

    def recording_save(plt, fig, path):
        seen[path.name] = [t.get_text() for t in fig.axes[0].get_xticklabels()]
        return save(plt, fig, path)

    monkeypatch.setattr(plots, "_save", recording_save)
    paths = plots.write_plots(evaluation(with_deadlines()), tmp_path)
    assert [p.name for p in paths] == [*plots.PLOT_FILES, plots.DEADLINE_PLOT]
    assert seen[plots.DEADLINE_PLOT] == ["min", "fifo"]  # ratio 0.75 before 0.5: higher is better
    path = tmp_path / plots.DEADLINE_PLOT
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        assert img.size[0] >= 300 and img.size[1] >= 200


def test_no_deadline_plot_without_deadlines(tmp_path):
    from tapfinger.evaluation import plots

    per = {n: {s: fake(s, 4.0 + s + i) for s in SEEDS} for i, n in enumerate(["min", "fifo"])}
    paths = plots.write_plots(evaluation(per), tmp_path)
    assert [p.name for p in paths] == list(plots.PLOT_FILES)
    assert not (tmp_path / plots.DEADLINE_PLOT).exists()


def test_deadline_difference_is_paired_against_the_heuristic_meeting_most_deadlines():
    out = evaluation(with_deadlines())  # min meets most (0.75 vs 0.5 on average)
    assert out["best_deadline_heuristic"] == "min"
    assert out["policies"]["fifo"]["deadline_diff_vs_best"]["per_seed"] == pytest.approx([-0.25, -0.25])
    assert out["policies"]["min"]["deadline_diff_vs_best"]["mean"] == 0.0


def test_no_deadline_difference_without_deadlines():
    per = {n: {s: fake(s, 4.0) for s in SEEDS} for n in ("min", "fifo")}
    out = evaluation(per)
    assert "best_deadline_heuristic" not in out and "deadline_diff_vs_best" not in out["policies"]["min"]


def test_training_keeps_the_policy_meeting_most_deadlines_as_best():
    from agents.learned.train import EvalResult

    nan = float("nan")
    assert EvalResult(9.0, 0, 0.8).better_than(EvalResult(5.0, 0, 0.7))  # more deadlines met beats a lower JCT
    assert not EvalResult(5.0, 0, 0.7).better_than(EvalResult(9.0, 0, 0.8))
    assert EvalResult(4.0, 0, 0.8).better_than(EvalResult(5.0, 0, 0.8))  # a tie: the lower JCT
    assert EvalResult(4.0, 0, nan).better_than(EvalResult(5.0, 0, nan)) and EvalResult(4.0, 0).better_than(None)
    assert not EvalResult(5.0, 0, nan).better_than(EvalResult(5.0, 0, nan))  # strict, as before


def test_episode_result_deadline_ratio_counts_the_engines_met():
    rec = records()
    res = result(rec)
    has = rec["deadline"] >= 0
    assert res.deadline_ratio == pytest.approx(rec["met"][has].mean())
    assert math.isnan(result(records(has_deadline=False)).deadline_ratio)
