"""Fault metrics (issue 15, item 4): lost work, restarts, failures and recovery time from hand-made
task records; how the harness, results.json, the table, the episode cache and the plots carry them;
EpisodeResult's fault events from a real engine; and scripts/fault_study.py on a tiny scenario."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from envs.episode import EpisodeResult, run_episode
from tapfinger.evaluation.episode_cache import _decode, _encode
from tapfinger.evaluation.harness import EvalConfig, format_table, summarise, write_results
from tapfinger.evaluation.metrics import FAULT_KEYS, EpisodeMetrics, episode_metrics, fault_outcomes
from tapfinger.sim.tier_settings import Faults

ROOT = Path(__file__).resolve().parent.parent

# Five tasks, all arrived at slot 0 (jct = finish + 1 when finished):
#   0: finished; hit twice (recovered after 3 and 4 slots: 7), lost 0.3; 3 restarts (one a capacity shrink)
#   1: finished; never hit; 1 restart (a departure: announced, nothing lost)
#   2: unfinished; hit once, still waiting at the end (no recovery yet), lost 0.5; 1 restart before
#   3: finished; hit once, back after 2 slots, lost 0.2; 1 restart
#   4: finished; nothing happened
# lost 1.0; restarts 6; failures 4; recovery over the finished tasks' hits: (7 + 2) / (2 + 1) = 3.
FINISH = [9, 4, -1, 6, 2]
FAILURES = [2, 0, 1, 1, 0]
RECOVERY = [7, 0, 0, 2, 0]
LOST = [0.3, 0.0, 0.5, 0.2, 0.0]
PREEMPTIONS = [3, 1, 1, 1, 0]


def records(fault_keys: bool = True, **override) -> dict:
    finish = np.array(override.get("finish", FINISH), dtype=np.int64)
    rec = {"finish": finish, "jct": np.where(finish >= 0, finish + 1, -1)}
    if fault_keys:
        rec["failures"] = np.array(override.get("failures", FAILURES), dtype=np.int64)
        rec["recovery_slots"] = np.array(override.get("recovery_slots", RECOVERY), dtype=np.int64)
        rec["lost_work"] = np.array(override.get("lost_work", LOST), dtype=np.float64)
        rec["preemptions"] = np.array(override.get("preemptions", PREEMPTIONS), dtype=np.int64)
    return rec


def result(rec: dict, fault_slots=(3, 3, 8)) -> EpisodeResult:
    slots = 10
    return EpisodeResult(seed=5, records=rec, slots=slots, rounds=slots, decisions=slots, decide_seconds=0.1,
                         truncated=True, invalid_actions=0, in_system=np.arange(slots)[::-1].copy(),
                         busy=np.ones((slots, 2), dtype=np.int64), fault_slots=np.array(fault_slots, dtype=np.int64))


def metrics_of(rec: dict, fault_slots=(3, 3, 8)) -> EpisodeMetrics:
    return episode_metrics(result(rec, fault_slots), ("cpu", "gpu"), np.array([4, 2]))


# ----------------------------------------------------------------------------- one episode


def test_fault_outcomes_by_hand():
    lost, restarts, failures, recovery = fault_outcomes(records())
    assert lost == pytest.approx(1.0) and restarts == 6 and failures == 4
    assert recovery == pytest.approx(3.0)
    m = metrics_of(records())
    assert (m.lost_work, m.restarts, m.failures) == (pytest.approx(1.0), 6, 4)
    assert m.recovery == pytest.approx(3.0) and m.fault_slots == (3, 3, 8) and m.has_faults
    assert m.unfinished == 1 and m.avg_jct == pytest.approx((10 + 5 + 7 + 3) / 4)  # JCT as before


def test_a_hit_task_that_finished_counts_its_recovery_even_if_others_did_not():
    # Only task 2 (unfinished, still waiting) was hit: no finished task was hit, so no recovery time.
    rec = records(failures=[0, 0, 1, 0, 0], recovery_slots=[0] * 5)
    assert math.isnan(fault_outcomes(rec)[3])
    # Task 2 finished after all (recovered in 5 slots): the mean is over its one hit.
    rec = records(finish=[9, 4, 8, 6, 2], failures=[0, 0, 1, 0, 0], recovery_slots=[0, 0, 5, 0, 0])
    assert fault_outcomes(rec)[3] == pytest.approx(5.0)


def test_records_without_fault_keys_had_no_faults():
    assert fault_outcomes(records(fault_keys=False))[:3] == (0.0, 0, 0)
    assert math.isnan(fault_outcomes(records(fault_keys=False))[3])
    m = metrics_of(records(fault_keys=False), fault_slots=())
    assert (m.lost_work, m.restarts, m.failures, m.fault_slots) == (0.0, 0, 0, ())
    assert not m.has_faults


def test_restarts_alone_are_no_fault():
    # A capacity schedule preempts tasks without any fault: the fault metrics must not switch on.
    m = metrics_of(records(failures=[0] * 5, recovery_slots=[0] * 5, lost_work=[0.0] * 5), fault_slots=())
    assert m.restarts == 6 and not m.has_faults


def test_the_episode_cache_keeps_the_fault_metrics():
    m = metrics_of(records())
    back = _decode(json.loads(json.dumps(_encode(m))))
    assert (back.lost_work, back.restarts, back.failures, back.fault_slots) == (pytest.approx(1.0), 6, 4, (3, 3, 8))
    assert back.recovery == pytest.approx(3.0)
    nan = metrics_of(records(fault_keys=False), fault_slots=())
    assert math.isnan(_decode(json.loads(json.dumps(_encode(nan)))).recovery)
    # A record cached before faults existed decodes with the no-fault defaults.
    old = _encode(m)
    for key in (*FAULT_KEYS, "fault_slots"):
        del old[key]
    back = _decode(json.loads(json.dumps(old)))
    assert (back.lost_work, back.restarts, back.failures, back.fault_slots) == (0.0, 0, 0, ())
    assert math.isnan(back.recovery)


def test_episode_result_fault_slots_are_the_engines_failures_and_departures():
    from agents.registry import make_policy
    from tapfinger.sim.engine import Engine

    scenario = tiny_scenario(mtbf=90.0)
    engine = Engine(scenario)
    res = run_episode(scenario, make_policy("fifo", scenario, seed=1000), 1000, engine=engine)
    expected = [slot for slot, _, event in engine.fault_log if event in ("fail", "leave")]
    assert expected, "the fault rate is high enough that some node fails"
    assert res.fault_slots.tolist() == expected and res.fault_slots.dtype == np.int64
    assert any(event not in ("fail", "leave") for _, _, event in engine.fault_log)  # repairs, slowdowns: left out
    quiet = dataclasses.replace(scenario, faults=Faults())
    assert run_episode(quiet, make_policy("fifo", quiet, seed=1000), 1000).fault_slots.size == 0


# ----------------------------------------------------------------------------- across seeds

SEEDS = [1, 2]


def fake(seed: int, avg: float, lost: float = 0.0, restarts: int = 0, failures: int = 0,
         recovery: float = float("nan"), fault_slots=()) -> EpisodeMetrics:
    return EpisodeMetrics(seed=seed, avg_jct=avg, p50_jct=avg, p95_jct=avg, p99_jct=avg, makespan=10,
                          utilisation={"cpu": 0.5, "gpu": 0.25}, decisions_per_s=100.0, invalid_actions=0,
                          truncated=False, unfinished=0, jct=np.array([2, 3, 4]), in_system=np.array([2, 1, 0]),
                          lost_work=lost, restarts=restarts, failures=failures, recovery=recovery,
                          fault_slots=fault_slots)


def with_faults() -> dict:
    # min: lost 1.5, 0.5; restarts 3, 1; failures 2, 1; recovery 4, nan. fifo: none of it.
    return {"min": {1: fake(1, 4.0, 1.5, 3, 2, 4.0, (1, 5)), 2: fake(2, 5.0, 0.5, 1, 1, float("nan"), (2,))},
            "fifo": {2: fake(2, 7.0, fault_slots=(2,)), 1: fake(1, 3.0, fault_slots=(1, 5))}}


def evaluation(per: dict, faults: Faults | None = None) -> dict:
    # summarise reads only the scenario's name, resources and fault model: a stand-in will do.
    scenario = SimpleNamespace(name="hand-made", resources=("cpu", "gpu"), faults=faults or Faults())
    cfg = EvalConfig(scenario, ["min", "fifo"], SEEDS, progress=False)
    return summarise(cfg, per, {1: 1.0, 2: 1.0})


OLD_KEYS = {"avg_jct", "p50_jct", "p95_jct", "p99_jct", "makespan", "decisions_per_s", "utilisation", "diff_vs_best",
            "invalid_actions", "unfinished_tasks", "truncated_episodes"}


def refuse(constant):
    raise AssertionError(f"not strict JSON: {constant}")


def test_summarise_and_results_json_with_faults(tmp_path):
    res = evaluation(with_faults())
    m, f = res["policies"]["min"], res["policies"]["fifo"]
    assert set(m) == OLD_KEYS | set(FAULT_KEYS) and set(f) == set(m)
    assert m["lost_work"]["per_seed"] == [1.5, 0.5] and m["lost_work"]["mean"] == pytest.approx(1.0)
    assert m["restarts"]["per_seed"] == [3.0, 1.0] and m["failures"]["mean"] == pytest.approx(1.5)
    assert m["recovery"]["mean"] == 4.0 and math.isnan(m["recovery"]["per_seed"][1])
    assert f["lost_work"]["per_seed"] == [0.0, 0.0]  # seed order; a policy no failure hit still has the keys
    data = json.loads(write_results(res, tmp_path).read_text(), parse_constant=refuse)
    assert data["policies"]["min"]["recovery"]["per_seed"] == [4.0, None]
    assert "policies.min.recovery.per_seed[1]" in data["nulls"]["fields"]
    assert "recovery time" in data["nulls"]["why"]


def test_a_fault_model_gives_the_keys_even_if_no_fault_came():
    per = {n: {s: fake(s, 4.0 + s) for s in SEEDS} for n in ("min", "fifo")}
    res = evaluation(per, Faults(mtbf_seconds=1e9, repair_seconds=1.0))
    assert res["policies"]["min"]["restarts"]["per_seed"] == [0.0, 0.0]


def test_without_faults_the_keys_are_exactly_the_old_ones():
    per = {n: {s: fake(s, 4.0 + s + i, restarts=2) for s in SEEDS} for i, n in enumerate(["min", "fifo"])}
    res = evaluation(per)  # restarts from a capacity schedule, no fault model: no fault keys
    assert set(res["policies"]["min"]) == OLD_KEYS and set(res["policies"]["fifo"]) == OLD_KEYS
    assert "lost work" not in format_table(res)


def test_format_table_with_faults():
    lines = format_table(evaluation(with_faults())).splitlines()
    assert "lost work" in lines[1] and "restarts" in lines[1] and "lost work =" in lines[0]
    rows = {ln.split()[0]: ln for ln in lines[3:]}
    assert rows["min"].split("]")[1].split()[:2] == ["1.00", "2.0"]  # after the CI: lost work, restarts
    assert rows["fifo"].split("]")[1].split()[:2] == ["0.00", "0.0"]


# ----------------------------------------------------------------------------- plots


def test_fault_plot_marks_the_first_seeds_events(tmp_path, monkeypatch):
    from PIL import Image

    from tapfinger.evaluation import plots

    seen = {}
    save = plots._save

    def recording_save(plt, fig, path):
        ax = fig.axes[0]
        seen[path.name] = sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_linestyle() == ":")
        return save(plt, fig, path)

    monkeypatch.setattr(plots, "_save", recording_save)
    paths = plots.write_plots(evaluation(with_faults()), tmp_path)
    assert [p.name for p in paths] == [*plots.PLOT_FILES, plots.FAULT_PLOT]
    assert seen[plots.FAULT_PLOT] == [1, 5]  # seed 1's events, not seed 2's
    with Image.open(tmp_path / plots.FAULT_PLOT) as img:
        assert img.size[0] >= 300 and img.size[1] >= 200
    for p in tmp_path.iterdir():
        p.unlink()
    per = {n: {s: fake(s, 4.0 + s) for s in SEEDS} for n in ("min", "fifo")}
    assert [p.name for p in plots.write_plots(evaluation(per), tmp_path)] == list(plots.PLOT_FILES)
    assert not (tmp_path / plots.FAULT_PLOT).exists()


# ----------------------------------------------------------------------------- scripts/fault_study.py


def fault_study():
    """The script as a module (registered under its name: its dataclass looks itself up there)."""
    if "fault_study" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fault_study", ROOT / "scripts" / "fault_study.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["fault_study"] = mod
        spec.loader.exec_module(mod)
    return sys.modules["fault_study"]


def tiny_scenario(mtbf: float = 60.0):
    """edge-faulty with 15 tasks and frequent failures: a fault study in well under a second an episode."""
    from tapfinger.sim.scenario import load_scenario

    s = load_scenario("edge-faulty")
    return dataclasses.replace(s, arrivals=dataclasses.replace(s.arrivals, tasks=15),
                               faults=dataclasses.replace(s.faults, mtbf_seconds=mtbf, repair_seconds=60.0))


def test_fault_study_on_off_is_paired_on_the_same_seeds():
    fs = fault_study()
    study = fs.Study([1000, 1001], workers=1, progress=False)
    rows = fs.on_off(study, tiny_scenario(), ["greedy", "fifo"])
    for n in ("greedy", "fifo"):
        j = rows[n]["avg_jct"]
        assert j["diff"]["mean"] == pytest.approx(j["on"]["mean"] - j["off"]["mean"])  # paired, no nan here
    assert rows["greedy"]["restarts"]["mean"] > 0  # with failures every minute some task is hit
    off = fs.faults_off(tiny_scenario())
    assert not off.faults.active and off.name.endswith("[faults off]")


def test_fault_study_checkpoints_scales_and_plot(tmp_path):
    fs = fault_study()
    base = tiny_scenario()
    study = fs.Study([1000, 1001], workers=1, progress=False)
    rows = fs.checkpoint_study(study, base, [0, 30], 2.0, "greedy")
    assert [r["interval_seconds"] for r in rows] == [0.0, 30.0]
    assert all(np.isfinite(r["avg_jct"]["mean"]) for r in rows)
    path = fs.plot_checkpoints(base, "greedy", rows, tmp_path / "checkpoint_interval.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert fs.with_checkpoints(base, 30, 2.0) is base  # the scenario's own setting: the same episodes
    double = fs.scaled(base, 2)
    f, g = base.faults, double.faults
    assert g.mtbf_seconds == f.mtbf_seconds / 2 and g.slowdown_mtbf_seconds == f.slowdown_mtbf_seconds / 2
    assert g.leave_mtbf_seconds == f.leave_mtbf_seconds / 2 and g.repair_seconds == f.repair_seconds
    assert fs.scaled(base, 1) is base
    with pytest.raises(ValueError, match="event file"):
        fs.scaled(dataclasses.replace(base, faults=Faults(events=((1.0, 0, "fail", 0.0),))), 2)
    out = fs.scale_study(study, base, [2], ["fifo"])
    assert out[0]["scale"] == 2.0 and set(out[0]["policies"]["fifo"]) == {"avg_jct", "makespan", "lost_work",
                                                                        "restarts"}


@pytest.mark.parametrize("argv, says", [
    (["--seeds", "1"], "at least 2"),
    (["--workers", "0"], "at least 1"),
    (["--checkpoint-intervals", "-5"], "seconds >= 0"),
    (["--fault-scales", "0"], "must be > 0"),
    (["--mtbf", "-1"], "> 0"),
    (["--checkpoint-cost", "nan"], ">= 0"),
    (["--policies", "greedy,greedy"], "each once"),
])
def test_fault_study_bad_flags(argv, says, capsys):
    with pytest.raises(SystemExit) as exc:
        fault_study().parse_args(argv)
    assert exc.value.code == 2 and says in capsys.readouterr().err


def test_fault_study_needs_a_fault_model(tmp_path, capsys):
    assert fault_study().main(["--scenario", "edge-default", "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "no fault model" in err and "--mtbf" in err
    assert fault_study().main(["--policies", "nosuch", "--out", str(tmp_path), "--quiet"]) == 2


def test_fault_study_main_end_to_end(tmp_path, capsys):
    code = fault_study().main(["--scenario", "edge-default", "--mtbf", "120", "--tasks", "10", "--seeds", "2",
                               "--workers", "1", "--policies", "fifo", "--checkpoint-intervals", "0", "60",
                               "--out", str(tmp_path), "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "(a) edge-default" in printed and "(b)" in printed and "fifo" in printed
    data = json.loads((tmp_path / "fault_study.json").read_text(), parse_constant=refuse)
    assert set(data["on_off"]["fifo"]) == {"avg_jct", "makespan", "lost_work", "restarts", "recovery"}
    assert (tmp_path / "checkpoint_interval.png").is_file()
    assert not (tmp_path / "episodes.partial.jsonl").exists()  # removed once the study completed
