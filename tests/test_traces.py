"""Arrival traces: round trips, validation errors, exact replay in the engine, the Philly importer,
and the built-in scenarios that use them."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from agents.registry import make_policy
from tapfinger.cli.main import main
from tapfinger.sim.engine import WAITING_NOT_ARRIVED, Engine
from envs.episode import run_episode
from tapfinger.sim.scenario import load_scenario
from tapfinger.sim.traces import (Trace, TraceError, read_trace, trace_from_workload, trace_to_workload,
                                  trace_workload, write_trace)
from tapfinger.testbed.philly import PhillyImport, import_philly, parse_start, read_philly
from tapfinger.sim.workload import Workload, make_workload

TYPES = ("cnn", "audio", "lm")


def trace_scenario(tmp_path, trace_text: str, tasks: int = 0, slot: float = 5.0, visibility: str = "random-subset"):
    """A CPU-only scenario on the packaged local profile that replays `trace_text`."""
    (tmp_path / "arrivals.csv").write_text(trace_text)
    (tmp_path / "s.toml").write_text(f"""
name = "replay"
resources = ["cpu", "gpu", "mem"]
grid_max = {{cpu = 2, gpu = 1, mem = 2}}
slot_seconds = {slot}
visibility = "{visibility}"
profile = "package:data/local_profile.csv"
startup_seconds = 5
[arrivals]
process = "trace"
trace = "arrivals.csv"
tasks = {tasks}
[[clusters]]
name = "a"
nodes = [{{cpu = 4, gpu = 0, mem = 8}}]
[[clusters]]
name = "b"
nodes = [{{cpu = 2, gpu = 0, mem = 4}}, {{cpu = 2, gpu = 0, mem = 4}}]
""" + "".join(f"""
[[task_types]]
name = "{t}"
minimum = {{cpu = 1, gpu = 0, mem = 1}}
progress = {{model = "profile"}}
""" for t in TYPES))
    return load_scenario(tmp_path / "s.toml")


GOOD = """# a comment line
arrival_seconds,task_type,work,deadline_seconds
0,cnn,1,
0,lm,2.5,100
4.999,audio,,
5,cnn,0.25,60.5

12.5,lm,1,
"""


# ---------------------------------------------------------------------------------------------
# round trips


def test_trace_file_round_trip(tmp_path):
    tr = Trace(np.array([0.0, 0.0, 1.25, 7.0, 1e6 + 0.1]), ("cnn", "lm", "audio", "cnn", "lm"),
               np.array([1.0, 0.3333333333333333, 2.0, 4.0, 1.0]), np.array([np.nan, 50.0, np.nan, 7.0, 2e6]),
               ("made by a test", "second line"))
    write_trace(tmp_path / "t.csv", tr)
    back = read_trace(tmp_path / "t.csv", TYPES)
    assert back.same_rows(tr)
    assert back.task_type == tr.task_type
    np.testing.assert_array_equal(back.arrival_seconds, tr.arrival_seconds)
    np.testing.assert_array_equal(back.work, tr.work)
    np.testing.assert_array_equal(back.deadline_seconds, tr.deadline_seconds)  # NaN == NaN here
    assert back.comments == tr.comments
    write_trace(tmp_path / "u.csv", back)
    assert (tmp_path / "u.csv").read_text() == (tmp_path / "t.csv").read_text()


@pytest.mark.parametrize("slot", [5.0, 0.1, 3.7])
def test_workload_round_trips_through_a_trace(tmp_path, slot):
    sc = trace_scenario(tmp_path, GOOD, slot=slot)
    rng = np.random.default_rng(3)
    n = 200
    wl = Workload(arrival_slot=np.sort(rng.integers(0, 5000, n)), task_type=rng.integers(0, 3, n),
                  visible=np.ones((n, sc.num_clusters), dtype=bool), work=rng.uniform(0.1, 4, n),
                  deadline=np.where(rng.random(n) < 0.5, -1, 6000 + rng.integers(0, 100, n)))
    write_trace(tmp_path / "w.csv", trace_from_workload(wl, sc))
    back = trace_to_workload(read_trace(tmp_path / "w.csv"), sc, np.random.default_rng(0))
    np.testing.assert_array_equal(back.arrival_slot, wl.arrival_slot)
    np.testing.assert_array_equal(back.task_type, wl.task_type)
    np.testing.assert_array_equal(back.work, wl.work)
    np.testing.assert_array_equal(back.deadline, wl.deadline)


def test_trace_workload_converts_seconds_to_slots(tmp_path):
    sc = trace_scenario(tmp_path, GOOD)
    wl = make_workload(sc, seed=1)
    # 0, 0, 4.999 -> slot 0; 5 -> slot 1; 12.5 -> slot 2 (a task arriving during slot k arrives in k)
    assert wl.arrival_slot.tolist() == [0, 0, 0, 1, 2]
    assert [sc.task_types[i].name for i in wl.task_type] == ["cnn", "lm", "audio", "cnn", "lm"]
    assert wl.work.tolist() == [1.0, 2.5, 1.0, 0.25, 1.0]
    assert wl.deadline.tolist() == [-1, 20, -1, 12, -1]
    assert wl.visible.any(axis=1).all()
    # the same seed gives the same visibility; the trace fixes everything else
    np.testing.assert_array_equal(make_workload(sc, seed=1).visible, wl.visible)
    assert trace_workload(dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=2)),
                          np.random.default_rng(0)).num_tasks == 2


def test_visibility_modes_apply_to_traces(tmp_path):
    sc = trace_scenario(tmp_path, GOOD, visibility="home")
    assert (make_workload(sc, 0).visible.sum(axis=1) == 1).all()
    sc = trace_scenario(tmp_path, GOOD, visibility="all")
    assert make_workload(sc, 0).visible.all()


# ---------------------------------------------------------------------------------------------
# bad files: each names the file, the line, the column, the problem and the fix

HEADER = "arrival_seconds,task_type,work,deadline_seconds\n"


@pytest.mark.parametrize("text, match", [
    (HEADER + "0,cnn,1,\n3,resnet,1,\n", r"line 3, column 'task_type': unknown task type 'resnet'.*Fix: use one of"),
    (HEADER + "0,cnn,1,\nsoon,lm,1,\n", r"line 3, column 'arrival_seconds': 'soon' is not a number.*Fix"),
    (HEADER + "0,cnn,lots,\n", r"line 2, column 'work': 'lots' is not a number"),
    (HEADER + "0,cnn,1,tomorrow\n", r"line 2, column 'deadline_seconds': 'tomorrow' is not a number"),
    (HEADER + "-1,cnn,1,\n", r"line 2, column 'arrival_seconds': negative time -1.*Fix"),
    (HEADER + "0,cnn,-2,\n", r"line 2, column 'work': must be > 0, got -2"),
    (HEADER + "0,cnn,0,\n", r"column 'work': must be > 0"),
    (HEADER + "10,cnn,1,5\n", r"column 'deadline_seconds': deadline 5 is before the arrival 10"),
    (HEADER + "0,cnn,1,\n10,lm,1,\n9.5,cnn,1,\n",
     r"line 4, column 'arrival_seconds': time 9.5 is earlier than the previous row's 10.*Fix: sort"),
    (HEADER + "0,cnn,1,\n1,lm\n", r"line 3: 2 cells, but the header \(line 1\) has 4 columns"),
    (HEADER + "nan,cnn,1,\n", r"column 'arrival_seconds': 'nan' is not a finite number"),
    (HEADER + "0,,1,\n", r"line 2, column 'task_type': is empty"),
    ("arrival_seconds,work\n0,1\n", r"line 1: missing column\(s\) \['task_type'\].*Fix: the header must name"),
    ("task_type\ncnn\n", r"missing column\(s\) \['arrival_seconds'\]"),
    ("arrival_seconds,task_type,priority\n0,cnn,3\n", r"unknown column\(s\) \['priority'\].*Fix: use only"),
    ("arrival_seconds,task_type,task_type\n0,cnn,lm\n", r"appear more than once"),
    ("0,cnn,1,\n5,lm,1,\n", r"line 1: the first row .* is data, not a header.*Fix: start the file with a header"),
    ("", r"is empty \(no header, no rows\).*Fix: start it with the header"),
    ("# only a comment\n\n", r"is empty"),
    (HEADER, r"has a header but no task rows"),
])
def test_bad_trace_files_give_clear_errors(tmp_path, text, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TraceError, match=match) as info:
        read_trace(path, TYPES)
    assert str(path) in str(info.value) and "Fix:" in str(info.value)


def test_missing_file_and_too_many_tasks(tmp_path):
    with pytest.raises(TraceError, match=r"nope.csv: file not found"):
        read_trace(tmp_path / "nope.csv")
    sc = trace_scenario(tmp_path, GOOD, tasks=6)
    with pytest.raises(TraceError, match=r"arrivals.tasks = 6 but trace .* has only 5 rows.*Fix"):
        make_workload(sc, 0)


def test_engine_reports_trace_errors_on_reset(tmp_path):
    sc = trace_scenario(tmp_path, HEADER + "0,gpt,1,\n")
    with pytest.raises(TraceError, match="unknown task type 'gpt'"):
        Engine(sc).reset(0)


# ---------------------------------------------------------------------------------------------
# exact replay in the engine


def test_replayed_trace_reproduces_arrival_times_in_the_engine(tmp_path):
    rng = np.random.default_rng(7)
    n = 40
    seconds = np.sort(np.round(rng.uniform(0, 300, n), 2))
    seconds[5] = seconds[4]  # simultaneous arrivals
    seconds[10] = 5.0 * round(seconds[10] / 5.0)  # exactly on a slot boundary
    types = tuple(TYPES[i] for i in rng.integers(0, 3, n))
    write_trace(tmp_path / "arrivals.csv", Trace(seconds, types, np.ones(n), np.full(n, np.nan)))
    sc = trace_scenario(tmp_path, (tmp_path / "arrivals.csv").read_text())
    expected = np.floor(seconds / 5.0 + 1e-9).astype(int)

    eng = Engine(sc, strict=True)
    eng.reset(0)
    np.testing.assert_array_equal(eng.arrival[:n], expected)
    # Step through the episode doing nothing: each task must enter the system in its slot.
    first_seen = np.full(n, -1)
    idle = (np.full(eng.N, -1), np.zeros(eng.N, dtype=np.int64), np.zeros((eng.N, eng.R), dtype=np.int64))
    while eng.slot <= expected.max():
        arrived = (eng.status[:n] != WAITING_NOT_ARRIVED) & (first_seen < 0)
        first_seen[arrived] = eng.slot
        eng.play_round(*idle)
    np.testing.assert_array_equal(first_seen, expected)

    result = run_episode(sc, make_policy("random", sc, seed=0), seed=0)
    np.testing.assert_array_equal(result.records["arrival"], expected)
    assert [sc.task_types[i].name for i in result.records["type"]] == list(types)
    done = result.records["finish"] >= 0
    assert done.all() and (result.records["start"] >= result.records["arrival"]).all()


# ---------------------------------------------------------------------------------------------
# the Philly importer

PHILLY = """timestamp,duration,num_gpus,gpu_time,cluster
2017-10-09 08:10:00,100.0,1,100.0,aaaaaa
2017-10-09 07:59:59,50.0,1,50.0,aaaaaa
2017-10-09 08:00:00,1000.0,2,2000.0,bbbbbb
2017-10-09 08:30:00,7200.0,1,7200.0,bbbbbb
2017-10-09 08:05:00,10.0,1,10.0,cccccc
2017-10-09 09:00:00,5.0,1,5.0,cccccc
2017-10-09 08:59:59,36000.0,4,144000.0,aaaaaa
"""


def test_philly_import_maps_window_types_and_work(tmp_path):
    (tmp_path / "philly.csv").write_text(PHILLY)
    jobs = read_philly(tmp_path / "philly.csv")
    spec = PhillyImport(start=parse_start("2017-10-09 08:00"), hours=1, types=TYPES, gpu_time_edges=(300, 3600))
    tr = import_philly(jobs, spec)
    # window [08:00, 09:00): five jobs, sorted by time although the file is not
    assert tr.arrival_seconds.tolist() == [0.0, 300.0, 600.0, 1800.0, 3599.0]
    # GPU-time buckets: < 300 -> cnn, < 3600 -> audio, else lm
    assert tr.task_type == ("audio", "cnn", "cnn", "lm", "lm")
    # work = duration / median duration of the whole trace's jobs in the bucket, clipped to [0.25, 4]
    # bucket cnn: durations 100, 50, 10, 5 -> median 30; audio: 1000 -> 1000; lm: 7200, 36000 -> 21600
    assert tr.work.tolist() == [1.0, round(10 / 30, 3), round(100 / 30, 3), 0.333, 1.667]
    assert np.isnan(tr.deadline_seconds).all()
    assert any("import-trace" in c for c in tr.comments)

    half = import_philly(jobs, dataclasses.replace(spec, scale=0.4, seed=1))
    assert half.num_tasks == 2 and set(half.arrival_seconds) <= set(tr.arrival_seconds)
    assert import_philly(jobs, dataclasses.replace(spec, scale=0.4, seed=1)).same_rows(half)  # seeded
    fast = import_philly(jobs, dataclasses.replace(spec, time_scale=10))
    np.testing.assert_allclose(fast.arrival_seconds, tr.arrival_seconds / 10, atol=1e-3)

    with pytest.raises(TraceError, match=r"no Philly job was submitted in .*Fix: choose --start"):
        import_philly(jobs, dataclasses.replace(spec, start=parse_start("2018-01-01")))
    with pytest.raises(TraceError, match=r"3 task types need 2 GPU-time edges"):
        import_philly(jobs, dataclasses.replace(spec, gpu_time_edges=(300,)))


def test_import_trace_command_writes_a_replayable_trace(tmp_path, capsys):
    (tmp_path / "philly.csv").write_text(PHILLY)
    out = tmp_path / "window.csv"
    assert main(["import-trace", "--philly", str(tmp_path / "philly.csv"), "--start", "2017-10-09 08:00",
                 "--hours", "1", "--out", str(out)]) == 0
    assert "wrote 5 task(s)" in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("# Derived from the Microsoft Philly job trace")
    tr = read_trace(out, TYPES)
    assert tr.num_tasks == 5
    sc = trace_scenario(tmp_path, text)
    assert make_workload(sc, 0).arrival_slot.tolist() == [0, 60, 120, 360, 719]


def test_bad_philly_files(tmp_path):
    (tmp_path / "p.csv").write_text("timestamp,duration\n2017-10-09 08:00:00,5\n")
    with pytest.raises(TraceError, match=r"line 1: missing column\(s\) \['num_gpus', 'gpu_time'\]"):
        read_philly(tmp_path / "p.csv")
    (tmp_path / "p.csv").write_text(PHILLY.replace("2017-10-09 08:10:00", "yesterday"))
    with pytest.raises(TraceError, match=r"line 2, column 'timestamp': 'yesterday' is not"):
        read_philly(tmp_path / "p.csv")
    assert main(["import-trace", "--philly", str(tmp_path / "none.csv"), "--start", "2017-10-09",
                 "--hours", "1", "--out", str(tmp_path / "o.csv")]) == 2


# ---------------------------------------------------------------------------------------------
# the built-in scenarios that ship their data


@pytest.mark.parametrize("name, tasks", [("local-testbed", 40), ("philly-edge", 60)])
def test_builtin_local_scenarios_run_an_episode(name, tasks):
    sc = load_scenario(name)
    assert sc.resources == ("cpu", "gpu", "mem")
    assert "tapfinger" in sc.profile and "shared" not in sc.profile  # ships with the package
    sc = dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=tasks))
    result = run_episode(sc, make_policy("random", sc, seed=0), seed=0)
    assert not result.truncated
    assert (result.records["jct"] >= 1).all() and len(result.records["jct"]) == tasks
    assert math.isfinite(result.avg_jct)


def test_philly_edge_replays_the_packaged_window():
    sc = load_scenario("philly-edge")
    assert sc.arrivals.process == "trace" and sc.arrivals.tasks == 0
    tr = read_trace(sc.arrivals.trace, [t.name for t in sc.task_types])
    wl = make_workload(sc, 0)
    assert wl.num_tasks == tr.num_tasks >= 50
    np.testing.assert_array_equal(wl.arrival_slot, np.floor(tr.arrival_seconds / sc.slot_seconds + 1e-9))
    assert any("import-trace" in c for c in tr.comments)
