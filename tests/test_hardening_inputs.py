"""Bad input files and flags (issue 11, items 4, 7, 8, 9, 12-14): each gives one clear error that
names the file, key or flag and the fix, never a traceback, a hang, or an overwritten file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tapfinger.cli.main import main
from tapfinger.sim.scenario import SHARED_DATA_ENV, ScenarioError, load_scenario
from tapfinger.sim.traces import TraceError, read_trace
from tapfinger.sim.workload import make_workload
from tapfinger.testbed.errors import ProfilerError
from tapfinger.testbed.philly import read_philly
from tapfinger.testbed.profile_files import CSV_COLUMNS, existing_rows
from tapfinger.testbed.profiler import ProfileRequest, run_profile
from tests.helpers import TINY_SCENARIO

SCENARIO = TINY_SCENARIO

TRACE_SCENARIO = """
name = "replay"
resources = ["cpu", "gpu"]
grid_max = {cpu = 4, gpu = 1}
slot_seconds = 5
max_slots = 1000
[arrivals]
process = "trace"
trace = "arrivals.csv"
[[clusters]]
name = "a"
nodes = [{cpu = 4, gpu = 1}]
[[task_types]]
name = "cnn"
minimum = {cpu = 1, gpu = 0}
progress = {model = "synthetic", base = 0.5}
"""

HEADER = "arrival_seconds,task_type,work,deadline_seconds\n"
PHILLY = """timestamp,duration,num_gpus,gpu_time
2017-10-09 08:10:00,100.0,1,100.0
2017-10-09 08:30:00,7200.0,1,7200.0
"""
IMPORT = ["import-trace", "--start", "2017-10-09 08:00", "--hours", "1"]
QUICK = {"wait_idle": 0.0, "retries": 0}
FAKE = {"seconds": 2.0, "step_seconds": 0.5, "steps": 4, "samples": 16, "peak_mem_mb": 300.0,
        "gpu_mem_mb": None, "setup_seconds": 3.0}


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(tmp_path, text, *expected):
    """Loading `text` fails with a ScenarioError naming the file, every `expected` and a fix."""
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    msg = str(err.value)
    assert str(path) in msg and "Fix:" in msg, msg
    for part in expected:
        assert part in msg, msg
    return msg


# ---------------------------------------------------------------------------------------------
# item 7: every float of a scenario is finite


@pytest.mark.parametrize("key, old, new", [
    ("slot_seconds", 'name = "tiny"', 'name = "tiny"\nslot_seconds = nan'),
    ("slot_seconds", 'name = "tiny"', 'name = "tiny"\nslot_seconds = inf'),
    ("startup_seconds", 'name = "tiny"', 'name = "tiny"\nstartup_seconds = nan'),
    ("switch_weight", 'name = "tiny"', 'name = "tiny"\nswitch_weight = nan'),
    ("arrivals.rate", "rate = 1.0", "rate = nan"),
    ("arrivals.rate", "rate = 1.0", "rate = inf"),
    ("task_types[0].progress.base", "base = 0.25", "base = nan"),
    ("task_types[0].progress.gpu_scale", "base = 0.25", "base = 0.25, gpu_scale = inf"),
])
def test_non_finite_floats_are_refused(tmp_path, key, old, new):
    refused(tmp_path, SCENARIO.replace(old, new), f"'{key}'", "finite")


# ---------------------------------------------------------------------------------------------
# item 8: workload sizes are bounded (they hung before: 1.27 GB after 25 s)


@pytest.mark.parametrize("old, new, expected", [
    ("tasks = 10", "tasks = 10000000000000", ("'arrivals.tasks'", "1000000")),
    ("rate = 1.0", "rate = 1e-9", ("'arrivals.rate'", "max_slots = 100000")),
    ("rate = 1.0", "rate = 1e300", ("'arrivals.rate'", "1000000")),
    ('name = "tiny"', 'name = "tiny"\nmax_slots = 10000000000000', ("'max_slots'", "10000000")),
])
def test_workload_size_limits(tmp_path, old, new, expected):
    t0 = time.perf_counter()
    refused(tmp_path, SCENARIO.replace(old, new), *expected)
    assert time.perf_counter() - t0 < 5


def test_limits_leave_room_for_real_use(tmp_path):
    text = SCENARIO.replace("tasks = 10", "tasks = 1000000").replace("rate = 1.0", "rate = 21")
    assert load_scenario(write(tmp_path, text)).arrivals.tasks == 1_000_000
    slow = SCENARIO.replace("rate = 1.0", "rate = 0.01")  # 10 tasks over ~1000 of 100000 slots
    assert make_workload(load_scenario(write(tmp_path, slow)), 0).num_tasks == 10


# ---------------------------------------------------------------------------------------------
# item 9: tasks that could never start, and arrivals after the episode's end


TWO_CLUSTERS = SCENARIO.replace('[[task_types]]', """[[clusters]]
name = "small"
nodes = [{cpu = 1, gpu = 8}, {cpu = 1, gpu = 8}]
[[task_types]]""")


def test_task_type_that_only_some_clusters_can_hold_is_refused_unless_all_see_it(tmp_path):
    msg = refused(tmp_path, TWO_CLUSTERS, "'task_types[0].minimum'", "'IMG'", "small", "random-subset")
    assert "visibility" in msg
    refused(tmp_path, TWO_CLUSTERS.replace('name = "tiny"', 'name = "tiny"\nvisibility = "home"'),
            "'IMG'", "small")
    every = load_scenario(write(tmp_path, TWO_CLUSTERS.replace('name = "tiny"', 'name = "tiny"\nvisibility = "all"')))
    assert every.num_clusters == 2


@pytest.mark.parametrize("arrival", ["1e12", "1e300", "5000"])
def test_trace_arrival_after_max_slots_is_an_error(tmp_path, arrival):
    write(tmp_path, HEADER + f"0,cnn,1,\n{arrival},cnn,1,\n", "arrivals.csv")
    sc = load_scenario(write(tmp_path, TRACE_SCENARIO))
    with pytest.raises(TraceError) as err:
        make_workload(sc, 0)
    msg = str(err.value)
    assert "arrivals.csv, line 3" in msg and "max_slots = 1000" in msg and "Fix:" in msg, msg


def test_trace_arrival_in_the_last_slot_is_kept(tmp_path):
    write(tmp_path, HEADER + "0,cnn,1,\n4999.9,cnn,1,\n", "arrivals.csv")
    wl = make_workload(load_scenario(write(tmp_path, TRACE_SCENARIO)), 0)
    assert wl.arrival_slot.tolist() == [0, 999]


# ---------------------------------------------------------------------------------------------
# item 13: encodings, byte-order marks, directories


def test_scenario_with_a_byte_order_mark_loads(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + SCENARIO.encode())
    assert load_scenario(path).name == "tiny"


def test_non_utf8_scenario_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(SCENARIO.replace("tiny", "t\xefny").encode("latin-1"))
    with pytest.raises(ScenarioError, match=r"latin1.toml.*not UTF-8.*Fix:"):
        load_scenario(path)


def test_scenario_path_that_is_a_directory(tmp_path):
    with pytest.raises(ScenarioError, match=r"is a directory.*Fix:"):
        load_scenario(tmp_path)


def test_trace_with_a_byte_order_mark_reads(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "0,cnn,1,\n").encode())
    assert read_trace(path, ["cnn"]).num_tasks == 1


def test_trace_path_that_is_a_directory(tmp_path):
    with pytest.raises(TraceError, match=r"is a directory, not a file.*Fix:"):
        read_trace(tmp_path)


def test_philly_with_a_byte_order_mark_and_non_utf8(tmp_path):
    path = tmp_path / "p.csv"
    path.write_bytes(b"\xef\xbb\xbf" + PHILLY.encode())
    assert len(read_philly(path)) == 2
    path.write_bytes(PHILLY.encode() + b"2017-10-09 08:40:00,1.0,1,1.0\xff\n")
    with pytest.raises(TraceError, match=r"p.csv.*not UTF-8.*Fix:"):
        read_philly(path)
    with pytest.raises(TraceError, match=r"is a directory"):
        read_philly(tmp_path)


def test_profile_csv_with_a_byte_order_mark_or_another_encoding(tmp_path):
    out = tmp_path / "p.csv"
    out.write_bytes(b"\xef\xbb\xbf" + (",".join(CSV_COLUMNS) + "\n").encode())
    assert existing_rows(out) == {}
    out.write_bytes((",".join(CSV_COLUMNS) + "\ncnn\xe9,1,0\n").encode("latin-1"))
    with pytest.raises(ProfilerError, match=r"p.csv.*not UTF-8.*Fix:"):
        existing_rows(out)


# ---------------------------------------------------------------------------------------------
# item 14: TAPFINGER_SHARED_DATA that points nowhere


def test_shared_data_variable_pointing_nowhere_is_an_error(monkeypatch, tmp_path):
    # A copy of the data where the fallback looks (./shared/data): before, it was used silently.
    fallback = tmp_path / "shared" / "data" / "fake"
    fallback.mkdir(parents=True)
    (fallback / "profile.csv").write_text("task,cpus,gpus,seconds\nIMG,2,1,10\n")
    monkeypatch.chdir(tmp_path)
    text = SCENARIO.replace('name = "tiny"', 'name = "tiny"\nprofile = "shared:fake/profile.csv"').replace(
        'model = "synthetic", base = 0.25', 'model = "profile"')
    path = write(tmp_path, text)
    assert load_scenario(path).profile == str(Path("shared/data/fake/profile.csv").absolute())
    monkeypatch.setenv(SHARED_DATA_ENV, str(tmp_path / "no-such-dir"))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    msg = str(err.value)
    assert f"{SHARED_DATA_ENV}='{tmp_path / 'no-such-dir'}': does not exist" in msg and "Fix:" in msg, msg
    assert load_scenario(write(tmp_path, SCENARIO)).name == "tiny"  # no `shared:` data, no lookup


# ---------------------------------------------------------------------------------------------
# items 4 and 12: `tapfinger profile` and `import-trace` outputs


def profile(out, force=False, measure=lambda job: FAKE):
    req = ProfileRequest(models=("lm-tiny",), cpus=(1,), samples=16, **QUICK)
    return run_profile(req, out, progress=False, log=lambda s: None, measure_fn=measure, force=force)


def must_not_measure(job):
    raise AssertionError(f"measured {job} although the output was refused")


def test_profile_does_not_replace_a_json_it_did_not_write(tmp_path):
    results = tmp_path / "results.json"
    results.write_text('{"policies": {}}\n')  # e.g. what `tapfinger evaluate` wrote
    with pytest.raises(ProfilerError, match=r"results.json.*not written by `tapfinger profile`.*--force"):
        profile(tmp_path / "results.csv", measure=must_not_measure)
    assert results.read_text() == '{"policies": {}}\n' and not (tmp_path / "results.csv").exists()
    assert len(profile(tmp_path / "results.csv", force=True)) == 1
    assert json.loads(results.read_text())["profile"] == "results.csv"


def test_profile_does_not_replace_a_csv_it_did_not_write_without_force(tmp_path):
    out = tmp_path / "mine.csv"
    out.write_text("a,b\n1,2\n")
    with pytest.raises(ProfilerError, match=r"mine.csv.*not a `tapfinger profile` output.*--force"):
        profile(out, measure=must_not_measure)
    assert out.read_text() == "a,b\n1,2\n"
    profile(out, force=True)
    assert out.read_text().splitlines()[0] == ",".join(CSV_COLUMNS)


def test_profile_resumes_its_own_files_without_force(tmp_path):
    out = tmp_path / "p.csv"
    assert len(profile(out)) == 1
    assert profile(out, measure=must_not_measure) == []


def test_profile_out_whose_sidecar_is_itself(tmp_path):
    with pytest.raises(ProfilerError, match=r"--out .*prof.json: its sidecar .* is the same file.*Fix:"):
        profile(tmp_path / "prof.json", measure=must_not_measure)
    assert not (tmp_path / "prof.json").exists()


def test_profile_command_errors_are_one_line(tmp_path, capsys):
    base = ["profile", "--models", "lm-tiny", "--cpus", "1", "--wait-idle", "0", "--no-progress"]
    assert main(base + ["--out", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    (tmp_path / "results.json").write_text("{}")
    assert main(base + ["--out", str(tmp_path / "results.csv")]) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "Traceback" not in err
    (tmp_path / "file").write_text("")
    assert main(base + ["--out", str(tmp_path / "file" / "p.csv")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_import_trace_out_checks(tmp_path, capsys):
    (tmp_path / "philly.csv").write_text(PHILLY)
    cmd = IMPORT + ["--philly", str(tmp_path / "philly.csv"), "--out"]
    assert main(cmd + [str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    other = tmp_path / "notes.csv"
    other.write_text("my own notes\n")
    assert main(cmd + [str(other)]) == 2
    assert "--force" in capsys.readouterr().err and other.read_text() == "my own notes\n"
    assert main(cmd + [str(other), "--force"]) == 0
    assert main(cmd + [str(other)]) == 0  # a trace it wrote itself is replaced
    assert read_trace(other).num_tasks == 2


def test_profile_interrupted_says_what_it_kept(tmp_path):
    calls = []

    def interrupted_second(job):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return FAKE

    req = ProfileRequest(models=("lm-tiny", "audio-tiny"), cpus=(1,), samples=16, **QUICK)
    with pytest.raises(KeyboardInterrupt, match=r"kept 1 of 2 measurement\(s\) in .*p.csv; rerun the same command"):
        run_profile(req, tmp_path / "p.csv", progress=False, log=lambda s: None, measure_fn=interrupted_second)


def test_import_trace_flag_and_file_values_must_be_finite(tmp_path, capsys):
    (tmp_path / "philly.csv").write_text(PHILLY)
    base = ["import-trace", "--philly", str(tmp_path / "philly.csv"), "--start", "2017-10-09 08:00",
            "--out", str(tmp_path / "o.csv")]
    for flags in (["--hours", "inf"], ["--hours", "nan"], ["--hours", "1", "--time-scale", "nan"],
                  ["--hours", "1", "--gpu-time-edges", "300,nan"]):
        assert main(base + flags) == 2, flags
        err = capsys.readouterr().err
        assert "finite" in err and "Traceback" not in err, err
    (tmp_path / "philly.csv").write_text(PHILLY + "2017-10-09 08:40:00,1.0,inf,1.0\n")
    with pytest.raises(TraceError, match=r"line 4: .*must be finite numbers"):
        read_philly(tmp_path / "philly.csv")


def test_import_trace_out_under_a_file(tmp_path, capsys):
    (tmp_path / "philly.csv").write_text(PHILLY)
    assert main(IMPORT + ["--philly", str(tmp_path / "philly.csv"), "--out", str(tmp_path / "philly.csv" / "o.csv")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the same limits for scenarios built in code, and traces that are replayed only in part


def test_workload_of_a_scenario_built_in_code_is_bounded_too():
    sc = load_scenario("edge-default")
    for rate, tasks in ((float("nan"), 10), (1.0, 10**13), (1e300, 10)):
        bad = sc.with_overrides(arrivals=sc.arrivals.__class__("poisson", rate=rate, tasks=tasks))
        with pytest.raises(ScenarioError, match=r"Fix: use 1 <= tasks <= 1000000 and 0 < rate <= 1e\+06"):
            make_workload(bad, 0)


def test_only_the_replayed_rows_must_arrive_before_max_slots(tmp_path):
    write(tmp_path, HEADER + "0,cnn,1,\n10,cnn,1,\n1e12,cnn,1,\n", "arrivals.csv")
    text = TRACE_SCENARIO.replace('trace = "arrivals.csv"', 'trace = "arrivals.csv"\ntasks = 2')
    assert make_workload(load_scenario(write(tmp_path, text)), 0).arrival_slot.tolist() == [0, 2]


def test_far_deadline_does_not_overflow_into_a_negative_slot(tmp_path):
    write(tmp_path, HEADER + "0,cnn,1,1e300\n", "arrivals.csv")
    assert make_workload(load_scenario(write(tmp_path, TRACE_SCENARIO)), 0).deadline[0] > 10**18


def test_write_trace_replaces_the_file_whole(tmp_path, monkeypatch):
    from tapfinger.sim import traces

    out = tmp_path / "t.csv"
    out.write_text(HEADER + "0,cnn,1,\n")
    trace = read_trace(out)

    def fail_half_way(x):
        raise OSError("disk full")

    with monkeypatch.context() as m:  # a write that fails half-way leaves the old file as it was
        m.setattr(traces, "_num", fail_half_way)
        with pytest.raises(OSError, match="disk full"):
            traces.write_trace(out, trace, comments=["new"])
    assert out.read_text() == HEADER + "0,cnn,1,\n" and [p.name for p in tmp_path.iterdir()] == ["t.csv"]
    traces.write_trace(out, trace, comments=["new"])
    assert read_trace(out).comments == ("new",) and [p.name for p in tmp_path.iterdir()] == ["t.csv"]


def test_damaged_profile_row_names_the_line(tmp_path):
    out = tmp_path / "p.csv"
    out.write_text(",".join(CSV_COLUMNS) + "\n" + ",".join(["cnn", "one"] + ["0"] * (len(CSV_COLUMNS) - 2)) + "\n")
    with pytest.raises(ProfilerError, match=r"p.csv, line 2: cpus and gpus must be integers.*Fix:"):
        existing_rows(out)
