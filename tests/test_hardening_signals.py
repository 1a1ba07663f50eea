"""Issue 11 follow-ups: `tiresias` on clusters without GPUs (it used to start no task there, so
every episode ran to `max_slots`), and SIGTERM, which stops a command the way Ctrl-C does
(exit 143, one line, no traceback from any worker, no orphan)."""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from agents.heuristics.tiresias import TiresiasPolicy
from agents.registry import make_policy
from envs.episode import run_episode
from envs.observations import build_observations
from tapfinger.cli.main import SIGTERM_EXIT, sigterm_as_interrupt
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import builtin_text, parse_scenario
from tapfinger.sim.workload import Workload
from tests.helpers import ServiceCheck, small

# the Ctrl-C test's helpers
from tests.test_hardening_evaluate import _alive, _children, _records

REPO = Path(__file__).resolve().parent.parent

# ----------------------------------------------------------------------------- tiresias without GPUs


@pytest.mark.parametrize("policy", ["tiresias", "tiresias-np"])
@pytest.mark.parametrize("scenario", ["local-testbed", "philly-edge"])
def test_tiresias_finishes_every_task_on_a_cluster_without_gpus(policy: str, scenario: str) -> None:
    """Both shipped CPU-only scenarios: every task finishes, well before the slot limit (20 tasks
    of 2-6 slots each, arriving over about 17 slots), with no action the masks forbid."""
    scen = small(scenario, 20, max_slots=400)
    res = run_episode(scen, make_policy(policy, scen), seed=3, engine=Engine(scen, strict=True))
    assert not res.truncated and res.unfinished == 0 and res.invalid_actions == 0, (res.slots, res.unfinished)
    assert res.slots < 200


def cpu_cluster(tasks: int, nodes: list[dict]) -> tuple:
    data = {
        "name": "cpu-only", "resources": ["cpu", "gpu", "mem"], "grid_max": {"cpu": 16, "gpu": 4, "mem": 4},
        "switch_weight": 0.5, "window_size": 10, "visibility": "all",
        "arrivals": {"process": "poisson", "rate": 1.0, "tasks": tasks},
        "clusters": [{"name": "c0", "nodes": nodes}],
        "task_types": [{"name": "cnn", "minimum": {"cpu": 1, "gpu": 0, "mem": 1},
                        "progress": {"model": "synthetic", "gpu_scale": 4.0, "base": 0.05}}],
    }
    scen = parse_scenario(data, "<test>")
    wl = Workload(arrival_slot=np.zeros(tasks, dtype=np.int64), task_type=np.zeros(tasks, dtype=np.int64),
                  visible=np.ones((tasks, 1), dtype=bool), work=np.ones(tasks),
                  deadline=np.full(tasks, -1, dtype=np.int64))
    eng = Engine(scen, strict=True)
    eng.reset(0, workload=wl)
    return scen, eng, wl


def test_tiresias_hands_out_cpus_by_least_attained_cpu_slots_without_gpus() -> None:
    """The GPU rule with CPUs in place of GPUs: one CPU at a time to the two-queue order of
    attained CPU-slots; the task with the least keeps the lead and gets all 4 CPUs; the others
    pause. Memory gets its minimum."""
    scen, eng, _ = cpu_cluster(4, [{"cpu": 4, "gpu": 0, "mem": 8}])
    for place in range(4):
        eng.play_round(np.array([place]), np.array([0]), np.array([[1, 0, 1]]))
    pol = TiresiasPolicy(scen)
    pol.reset(0)
    pol.service.gpu_slots = [{0: 10.0, 1: 0.0, 2: 5.0, 3: 20.0}]  # task 1 has the least service
    act = pol.act(build_observations(eng))
    realloc = {t: act.realloc[0, int(np.flatnonzero(eng.running[0] == t)[0])].tolist() for t in range(4)}
    assert realloc == {0: [0, 0, 0], 1: [4, 0, 1], 2: [0, 0, 0], 3: [0, 0, 0]}


class CpuCountingEngine(Engine):
    """The engine, also counting each task's CPU-slots at every slot end (the reference)."""

    def reset(self, seed, workload=None) -> None:
        super().reset(seed, workload)
        self.cpu_slots = np.zeros(self.T + 1)

    def _progress(self, ids: np.ndarray) -> None:
        self.cpu_slots[ids] += self.alloc[ids, self.static.cpu]
        super()._progress(ids)


def test_tiresias_counts_the_cpu_slots_the_engine_gives_on_nodes_without_gpus() -> None:
    scen = small("local-testbed", 20)
    pol = make_policy("tiresias", scen)
    eng = CpuCountingEngine(scen, strict=True)
    check = ServiceCheck(pol, lambda: eng.cpu_slots)
    run_episode(scen, check, seed=3, engine=eng)
    assert check.checked > 0


def test_tiresias_serves_tasks_on_both_kinds_of_node_in_one_cluster() -> None:
    """A cluster with a GPU node and a GPU-less node, two tasks on each: GPUs (one each) and an
    even CPU split on the first, CPUs one by one (two each) on the second; none pauses."""
    scen, eng, _ = cpu_cluster(4, [{"cpu": 4, "gpu": 2, "mem": 4}, {"cpu": 4, "gpu": 0, "mem": 4}])
    for place, node in enumerate((0, 0, 1, 1)):
        eng.play_round(np.array([place]), np.array([node]), np.array([[1, 0, 1]]))
    pol = TiresiasPolicy(scen)
    pol.reset(0)
    act = pol.act(build_observations(eng))
    realloc = {t: act.realloc[0, int(np.flatnonzero(eng.running[0] == t)[0])].tolist() for t in range(4)}
    assert realloc == {0: [2, 1, 1], 1: [2, 1, 1], 2: [2, 0, 1], 3: [2, 0, 1]}


# ----------------------------------------------------------------------------- SIGTERM


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL whatever is left of a test's subprocess and its workers (its own process group):
    always, since a failed run's workers can outlive it, holding its output pipes open."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nothing left: the usual case
    proc.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("to", ["the main process", "the process group"])
def test_sigterm_stops_evaluate_like_ctrl_c(tmp_path, to: str) -> None:
    """`kill PID` (the main process only) and a supervisor's SIGTERM to the whole group: exit
    143, one line saying what was kept, no traceback from the workers, no worker left."""
    from tapfinger.evaluation.episode_cache import CACHE_NAME

    scenario = tmp_path / "small.toml"
    scenario.write_text(builtin_text("synthetic-3").replace("tasks = 192", "tasks = 60"))
    out = tmp_path / "ev"
    command = [sys.executable, "-m", "tapfinger.cli", "evaluate", "--scenario", str(scenario), "--policies",
               "greedy,min,random", "--seeds", "8", "--workers", "2", "--quiet", "--no-plots", "--out", str(out)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while _records(out / CACHE_NAME) < 1:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        workers = _children(proc.pid)
        assert workers
        (os.kill if to == "the main process" else os.killpg)(proc.pid, signal.SIGTERM)
        sent = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - sent
        time.sleep(0.2)
        left = [p for p in workers if _alive(p)]  # before the clean-up below ends them
    finally:
        _kill_session(proc)
    assert proc.returncode == SIGTERM_EXIT == 143 and took < 5, (proc.returncode, took, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    said = re.fullmatch(r"tapfinger evaluate: terminated: kept (\d+) of 24 episodes in (.+); "
                        r"rerun the same command to finish", err.strip())
    assert said and Path(said[2]) == out / CACHE_NAME and int(said[1]) == _records(out / CACHE_NAME), err
    assert not left  # no orphaned worker


# Each pool's workers get SIGTERM from outside (as from a supervisor's stop sent to the whole
# group), one busy and one waiting for a task (holding the task queue's read lock), then the main
# process terminates the pool, as the commands do on KeyboardInterrupt. In a subprocess of its
# own session: if it hangs, it and its workers are killed.
POOLS_UNDER_SIGTERM = """
import multiprocessing as mp, os, signal, subprocess, sys, threading, time
from tapfinger.cli.main import sigterm_as_interrupt
from tapfinger.evaluation.harness import _init_worker as evaluate_init
from agents.learned.workers import _init_worker as training_init
for name, init in [("evaluate", evaluate_init), ("training", training_init)]:
    with sigterm_as_interrupt():
        pool = mp.get_context("fork").Pool(2, initializer=init)
        jobs = pool.imap_unordered(time.sleep, [0.01] * 20 + [5])
        next(jobs)
        time.sleep(0.5)  # the short jobs done: one worker busy, one waiting for a task
        workers = list(pool._pool)
        subprocess.run(["kill", "-s", "TERM", *(str(p.pid) for p in workers)], check=True)
        time.sleep(0.3)
        ended = sum(not p.is_alive() for p in workers)  # the busy one, at once
        stop = threading.Thread(target=lambda: (pool.terminate(), pool.join()), daemon=True)
        stop.start()
        stop.join(10)
        print(name, "hung" if stop.is_alive() else "stopped", ended, *sorted({p.exitcode for p in workers}))
        sys.stdout.flush()
        if stop.is_alive():
            os._exit(1)  # the pool's threads are stuck: forking another pool could hang too
os._exit(0)
"""


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="needs thread signal masks (POSIX)")
def test_pool_workers_end_quietly_on_sigterm_and_never_break_the_pool() -> None:
    """Evaluate's and training's workers, sent SIGTERM from outside: the busy one ends at once,
    the one waiting for a task (it holds the task queue's read lock) not until it lets go of it,
    so the pool's terminate() afterwards stops everything (a worker killed holding that lock
    makes terminate() wait forever); exit codes 143 (SIGTERM) or 0 (stopped by the pool), no
    traceback."""
    proc = subprocess.Popen([sys.executable, "-c", POOLS_UNDER_SIGTERM], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        _kill_session(proc)
    said = [line.split() for line in out.splitlines()]
    assert [s[:2] for s in said] == [["evaluate", "stopped"], ["training", "stopped"]], (out, err)
    for _, _, ended, *codes in said:
        assert int(ended) >= 1 and {int(c) for c in codes} <= {0, 143}, (out, err)
    assert "Traceback" not in err, err


def test_a_process_forked_before_its_initializer_ran_dies_quietly_on_sigterm(capfd) -> None:
    """A worker SIGTERMed before its initializer ran still has the main process's handler: it
    must end as the default action would, not raise KeyboardInterrupt (a traceback each)."""
    with sigterm_as_interrupt():
        procs = [mp.get_context("fork").Process(target=time.sleep, args=(30,)) for _ in range(2)]
        for p in procs:
            p.start()
        time.sleep(0.3)
        for p in procs:
            p.terminate()
            p.join(10)
    assert [p.exitcode for p in procs] == [-signal.SIGTERM] * 2
    assert "Traceback" not in capfd.readouterr().err


def test_sigterm_in_the_main_process_is_an_interrupt_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here, at once
    assert stop.received and signal.getsignal(signal.SIGTERM) is before
