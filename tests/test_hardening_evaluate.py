"""Issue 11, `tapfinger evaluate` / `demo`: the output place is checked before any episode runs,
finished episodes survive Ctrl-C and a rerun resumes them, bad flags are clear errors,
results.json is strict JSON, workers are capped, and a baseline that cannot fit its model
falls back with one warning instead of crashing the evaluation."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tapfinger.evaluation import harness
from agents.heuristics.optimus import progress_at_start
from agents.registry import make_policy
from envs.episode import run_episode
from tapfinger.cli.main import main
from tapfinger.evaluation.harness import EvalConfig, run_evaluation, summarise, write_results
from tapfinger.evaluation.metrics import EpisodeMetrics
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import builtin_text, load_scenario
from tests.helpers import default_sigint, small

REPO = Path(__file__).resolve().parent.parent


def cli(out, *extra: str, policies: str = "min,fifo") -> list[str]:
    return ["evaluate", "--scenario", "synthetic-3", "--policies", policies, "--seeds", "2", "--workers", "1",
            "--quiet", "--no-plots", "--out", str(out), *extra]


@pytest.fixture
def no_episodes(monkeypatch):
    """Fails the test if any episode starts: the checks must come before any work."""
    ran = []
    monkeypatch.setattr(harness, "_run_job", lambda job: ran.append(job) or pytest.fail("an episode ran"))
    return ran


# ----------------------------------------------------------------------------- item 3: --out first


@pytest.mark.parametrize("case, out, blocker, said", [
    ("--out is a file", "taken", "taken", "is a file"),
    ("--out under a file", "taken/sub", "taken", "is a file"),
    ("results.json is a folder", ".", "results.json/", "is a folder"),
    ("a plot is a folder", ".", "avg_jct.png/", "is a folder"),
])
def test_output_place_in_the_way_fails_before_any_episode(tmp_path, capsys, no_episodes, case, out, blocker, said):
    path = tmp_path / blocker
    path.mkdir() if blocker.endswith("/") else path.write_text("mine")
    args = [a for a in cli(tmp_path / out) if a != "--no-plots"]  # plots on: their files are checked too
    assert main(args) == 2, case
    err = capsys.readouterr().err
    assert str(path) in err and said in err and "Fix:" in err and "Traceback" not in err, err
    assert not no_episodes and (path.is_dir() or path.read_text() == "mine")  # nothing touched


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_out_fails_before_any_episode(tmp_path, capsys, no_episodes):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main(cli(locked)) == 2
        err = capsys.readouterr().err
        assert str(locked) in err and "not writable" in err and "Fix:" in err and not no_episodes
    finally:
        locked.chmod(0o700)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_out_that_cannot_be_created_fails_before_any_episode(capsys, no_episodes):
    assert main(cli("/proc/tapfinger-no-such-folder")) == 2  # not even root may make a folder there
    err = capsys.readouterr().err
    assert "/proc/tapfinger-no-such-folder" in err and "cannot be created" in err and "Fix:" in err


def test_write_results_leaves_no_temporary_file_on_failure(tmp_path):
    res = run_evaluation(EvalConfig(small("synthetic-3", tasks=10), ["min"], [1], progress=False))
    (tmp_path / "results.json").mkdir()
    with pytest.raises(OSError):
        write_results(res, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


# ----------------------------------------------------------------------------- item 3: resume


def comparable(results: dict) -> dict:
    """results.json content minus what differs between two runs of the same evaluation: the
    time it was made and the decision speed (wall-clock)."""
    data = json.loads(json.dumps({k: v for k, v in results.items() if not k.startswith("_")}, default=str))
    data.pop("created")
    for entry in data["policies"].values():
        entry.pop("decisions_per_s", None)
    return data


def test_interrupted_evaluation_keeps_episodes_and_resumes_only_the_missing(tmp_path, monkeypatch):
    from tapfinger.evaluation.episode_cache import CACHE_NAME, EpisodeCache

    sc = small("synthetic-3", tasks=20)
    names, seeds = ["min", "fifo"], [1, 2, 3, 4]
    whole = run_evaluation(EvalConfig(sc, names, seeds, progress=False))
    cache = EpisodeCache(tmp_path / CACHE_NAME)
    real = harness._run_job
    calls = []

    def interrupted(job):
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C during the fourth episode
        calls.append(job)
        return real(job)

    monkeypatch.setattr(harness, "_run_job", interrupted)
    with pytest.raises(KeyboardInterrupt, match=rf"^kept 3 of 8 episodes in {re.escape(str(cache.path))}; "
                                                r"rerun the same command to finish$"):
        run_evaluation(EvalConfig(sc, names, seeds, progress=False, cache=cache))
    assert len(EpisodeCache(cache.path).load_all()) == 3
    done_before = [(j[1], j[2]) for j in calls]

    calls.clear()
    monkeypatch.setattr(harness, "_run_job", lambda job: calls.append(job) or real(job))
    resumed = run_evaluation(EvalConfig(sc, names, seeds, progress=False, cache=cache))
    assert len(calls) == 5 and not {(j[1], j[2]) for j in calls} & set(done_before)  # only the missing
    assert comparable(resumed) == comparable(whole)
    for n in names:  # what the plots draw, too
        for s in seeds:
            a, b = resumed["_episodes"][n][s], whole["_episodes"][n][s]
            assert np.array_equal(a.jct, b.jct) and np.array_equal(a.in_system, b.in_system)


def test_cache_ignores_other_evaluations_and_a_cut_off_last_line(tmp_path):
    from tapfinger.evaluation.episode_cache import CACHE_NAME, EpisodeCache

    sc = small("synthetic-3", tasks=20)
    cache = EpisodeCache(tmp_path / CACHE_NAME)
    run_evaluation(EvalConfig(sc, ["min"], [1, 2], progress=False, cache=cache))
    with open(cache.path, "a") as f:
        f.write('{"key": "abc", "policy": "min", "se')  # a record cut off by a SIGKILL
    other = small("synthetic-3", tasks=21)  # another scenario: nothing of the first one applies
    keys = {harness.job_key(other, "min", s, {}) for s in (1, 2)}
    assert not EpisodeCache(cache.path).load(keys)
    again = EpisodeCache(cache.path)
    run_evaluation(EvalConfig(other, ["min"], [1], progress=False, cache=again))
    assert len(EpisodeCache(cache.path).load_all()) == 3  # appended after the cut-off line, readable


def test_completed_cli_evaluation_removes_its_cache(tmp_path, capsys):
    from tapfinger.evaluation.episode_cache import CACHE_NAME

    assert main(cli(tmp_path)) == 0
    assert (tmp_path / "results.json").is_file() and not (tmp_path / CACHE_NAME).exists()


def test_ctrl_c_while_writing_the_outputs_keeps_every_episode(tmp_path, capsys, monkeypatch):
    import tapfinger.cli.evaluate as evaluate_cli

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluate_cli, "_report", interrupted)
    assert main(cli(tmp_path)) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"tapfinger evaluate: interrupted: kept all 4 episodes in {tmp_path / 'episodes.partial.jsonl'}; "
                   f"rerun the same command to write the results")
    monkeypatch.undo()
    assert main(cli(tmp_path)) == 0
    assert "resumed 4 of 4 episodes" in capsys.readouterr().err and (tmp_path / "results.json").is_file()


def _children(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:
        out = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            kids = [int(k) for k in (task / "children").read_text().split()]
            out += kids + [g for k in kids for g in _children(k)]
        return out
    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _records(path: Path) -> int:
    return sum('"key"' in line for line in path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_ctrl_c_keeps_finished_episodes_and_the_rerun_finishes_them(tmp_path, capsys):
    from tapfinger.evaluation.episode_cache import CACHE_NAME

    scenario = tmp_path / "small.toml"
    scenario.write_text(builtin_text("synthetic-3").replace("tasks = 192", "tasks = 80"))
    args = ["evaluate", "--scenario", str(scenario), "--policies", "greedy,min,random", "--seeds", "8",
            "--workers", "2", "--quiet", "--no-plots", "--out"]
    out = tmp_path / "ev"
    command = [sys.executable, "-m", "tapfinger.cli", *args, str(out)]
    # its own session: the SIGINT goes to the whole process group, workers included, as a
    # terminal's Ctrl-C does
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 60
        while _records(out / CACHE_NAME) < 2:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        workers = _children(proc.pid)
        assert workers
        os.killpg(proc.pid, signal.SIGINT)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and took < 5, (proc.returncode, took, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    said = re.fullmatch(r"tapfinger evaluate: interrupted: kept (\d+) of 24 episodes in (.+); "
                        r"rerun the same command to finish", err.strip())
    assert said and Path(said[2]) == out / CACHE_NAME, err
    kept = int(said[1])
    assert 2 <= kept < 24 and _records(out / CACHE_NAME) == kept
    assert not (out / "results.json").exists()
    time.sleep(0.2)
    assert not [p for p in workers if _alive(p)]  # no orphaned worker

    # the same command again (in this process: the subprocess start-up is the slow part)
    assert main([*args, str(out)]) == 0
    assert f"resumed {kept} of 24 episodes" in capsys.readouterr().err
    assert not (out / CACHE_NAME).exists()
    whole = tmp_path / "whole"
    assert main([*args, str(whole)]) == 0
    resumed = json.loads((out / "results.json").read_text())
    assert comparable(resumed) == comparable(json.loads((whole / "results.json").read_text()))


# ----------------------------------------------------------------------------- items 12, 13: flags


@pytest.mark.parametrize("policies", ["", " , "])
def test_empty_policies_is_a_clear_error(tmp_path, capsys, no_episodes, policies):
    assert main(cli(tmp_path, policies=policies)) == 2
    err = capsys.readouterr().err
    assert "--policies" in err and "Fix:" in err and "KeyError" not in err


def test_repeated_policy_is_a_clear_error(tmp_path, capsys, no_episodes):
    assert main(cli(tmp_path, policies="min,fifo,min")) == 2
    err = capsys.readouterr().err
    assert "--policies" in err and "'min'" in err and "Fix:" in err


def test_negative_seed_start_is_a_clear_error(tmp_path, capsys, no_episodes):
    assert main(cli(tmp_path, "--seed-start", "-5")) == 2
    err = capsys.readouterr().err
    assert "--seed-start" in err and "-5" in err and ">= 0" in err and "Fix:" in err


def test_demo_checks_its_flags_too(tmp_path, capsys, no_episodes):
    assert main(["demo", "--seed-start", "-1", "--out", str(tmp_path), "--quiet", "--no-plots"]) == 2
    assert "--seed-start" in capsys.readouterr().err


@pytest.mark.parametrize("workers", ["0", "-3"])
def test_workers_below_one_is_a_clear_error(tmp_path, capsys, no_episodes, workers):
    args = cli(tmp_path)
    args[args.index("--workers") + 1] = workers
    assert main(args) == 2
    assert "--workers" in capsys.readouterr().err


# ----------------------------------------------------------------------------- item 14


def test_workers_are_capped_at_the_number_of_episodes(monkeypatch):
    import multiprocessing.pool

    asked = []
    real = multiprocessing.pool.Pool.__init__

    def spy(self, processes=None, *args, **kwargs):
        asked.append(processes)
        real(self, processes, *args, **kwargs)

    monkeypatch.setattr(multiprocessing.pool.Pool, "__init__", spy)
    sc = small("synthetic-3", tasks=10)
    res = run_evaluation(EvalConfig(sc, ["min"], [1, 2, 3], workers=100, progress=False))
    assert asked == [3] and len(res["policies"]["min"]["avg_jct"]["per_seed"]) == 3


def test_help_prints_a_plain_percent(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "95% CI" in out and "%%" not in out


def _metrics(seed: int, avg: float, per_s: float) -> EpisodeMetrics:
    return EpisodeMetrics(seed=seed, avg_jct=avg, p50_jct=avg, p95_jct=avg, p99_jct=avg, makespan=4,
                          utilisation={"cpu": 0.5, "gpu": 0.25}, decisions_per_s=per_s, invalid_actions=0,
                          truncated=math.isnan(avg), unfinished=3 if math.isnan(avg) else 0,
                          jct=np.array([2, 3]), in_system=np.array([1, 0]))


def test_results_json_is_strict_json_with_nulls_explained(tmp_path):
    sc = load_scenario("synthetic-3")
    cfg = EvalConfig(sc, ["min", "fifo"], [1, 2], progress=False)
    per = {"min": {1: _metrics(1, float("nan"), float("inf")), 2: _metrics(2, 4.0, 100.0)},
           "fifo": {1: _metrics(1, 5.0, 90.0), 2: _metrics(2, 6.0, 80.0)}}
    res = summarise(cfg, per, {1: 2.0, 2: 2.0})
    text = write_results(res, tmp_path).read_text()

    def refuse(constant):
        raise AssertionError(f"not strict JSON: {constant}")

    data = json.loads(text, parse_constant=refuse)
    m = data["policies"]["min"]
    assert m["avg_jct"]["per_seed"] == [None, 4.0] and m["decisions_per_s"]["per_seed"] == [None, 100.0]
    assert m["diff_vs_best"]["per_seed"][0] is None
    nulls = data["nulls"]
    assert "policies.min.avg_jct.per_seed[0]" in nulls["fields"]
    assert "policies.min.decisions_per_s.per_seed[0]" in nulls["fields"]
    assert "NaN" in nulls["why"] and "infinit" in nulls["why"]
    assert math.isnan(res["policies"]["min"]["avg_jct"]["per_seed"][0])  # the table still sees NaN
    finite = summarise(cfg, {"min": per["fifo"], "fifo": per["fifo"]}, {1: 2.0, 2: 2.0})
    assert "nulls" not in json.loads(write_results(finite, tmp_path / "f").read_text())


def test_a_policy_that_finished_nothing_is_not_the_best_and_the_outputs_still_work(tmp_path):
    from tapfinger.evaluation.harness import format_table
    from tapfinger.evaluation.plots import write_plots

    cfg = EvalConfig(load_scenario("synthetic-3"), ["min", "fifo"], [1, 2], progress=False)
    per = {"min": {s: _metrics(s, float("nan"), 50.0) for s in (1, 2)},
           "fifo": {1: _metrics(1, 5.0, 90.0), 2: _metrics(2, 6.0, 80.0)}}
    with np.errstate(all="ignore"):
        res = summarise(cfg, per, {1: 2.0, 2: 2.0})
    assert res["best_heuristic"] == "fifo"
    assert "min" in format_table(res) and len(write_plots(res, tmp_path)) == 3
    assert json.loads(write_results(res, tmp_path).read_text())["policies"]["min"]["avg_jct"]["mean"] is None


@pytest.mark.parametrize("name", ["optimus", "optimus-np"])
def test_optimus_without_enough_measurements_warns_once_and_falls_back(name):
    sc = small("local-testbed", tasks=30)  # 1-2 CPUs measured: 2 points for a 5-parameter model
    with pytest.warns(UserWarning) as seen:
        pol = make_policy(name, sc)
    said = [str(w.message) for w in seen]
    assert len(said) == 1, said
    assert re.search(rf"^{name}: .*cnn, audio, lm.*2 measured allocations.*5 parameters.*"
                     r"measured progress", said[0]), said[0]
    st = pol.static
    for k in range(len(sc.task_types)):  # the estimate is the measured progress per slot itself
        speed = progress_at_start(st, k)
        for c in (1, 2):
            for g in (0, 1):
                assert pol.remaining_time(k, 0.25, c, g) == pytest.approx(0.75 / speed[c, g])
    res = run_episode(sc, pol, seed=3, engine=Engine(sc, strict=True))
    assert not res.truncated and res.invalid_actions == 0 and (res.records["jct"] >= 1).all()


def test_a_fallback_warning_is_shown_once_per_evaluation_not_per_worker(capfd):
    sc = small("local-testbed", tasks=20)
    with pytest.warns(UserWarning) as seen:
        res = run_evaluation(EvalConfig(sc, ["optimus", "optimus-np"], [1, 2, 3, 4], workers=2, progress=False))
    said = sorted(str(w.message).split(":")[0] for w in seen if "measured progress" in str(w.message))
    assert said == ["optimus", "optimus-np"]
    assert "measured progress" not in capfd.readouterr().err  # the workers printed none themselves
    assert all(res["policies"][n]["unfinished_tasks"] == 0 for n in ("optimus", "optimus-np"))


def test_cli_shows_a_fallback_warning_as_one_line(tmp_path, capsys):
    args = cli(tmp_path, policies="optimus")
    args[args.index("synthetic-3")] = "local-testbed"
    assert main(args) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(err) == 1 and err[0].startswith("tapfinger evaluate: warning: optimus: "), err
