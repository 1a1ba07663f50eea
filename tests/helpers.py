"""Shared test helpers: small scenarios, hand-made workloads, random feasible actions."""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np
import pytest

from envs.actions import random_start
from tapfinger.sim.engine import Engine
from tapfinger.sim.scenario import (Scenario, ScenarioError, builtin_names, builtin_text, load_scenario,
                                resolve_data_path)
from tapfinger.sim.workload import Workload

# ----------------------------------------------------------------------------- shared data
# The trace scenarios (trace-3, trace-6, testbed-3) read `shared:tapfinger-testbed/...`, which
# lives outside the repository (../shared/data, or $TAPFINGER_SHARED_DATA). Every test that needs
# such a file skips, with the same reason, when it is absent; all other tests still run.


def _shared_refs(node) -> list[str]:
    if isinstance(node, str):
        return [node] if node.startswith("shared:") else []
    if isinstance(node, dict):
        return [r for v in node.values() for r in _shared_refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _shared_refs(v)]
    return []


def missing_shared_data(name: str = "trace-3") -> str | None:
    """Why built-in scenario `name` cannot be loaded here (a `shared:` file is absent), or None."""
    if name not in builtin_names():
        return None
    for spec in _shared_refs(tomllib.loads(builtin_text(name))):
        try:
            resolve_data_path(spec, None)
        except ScenarioError as exc:
            return f"needs the shared data outside the repository: {exc}"
    return None


def require_shared_data(name: str = "trace-3") -> None:
    """Skip the calling test when scenario `name`'s shared data file is absent."""
    reason = missing_shared_data(name)
    if reason:
        pytest.skip(reason)


def needs_shared_data(name: str = "trace-3") -> pytest.MarkDecorator:
    """Decorator / pytest.param mark: skip when scenario `name`'s shared data file is absent."""
    reason = missing_shared_data(name)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def scenario_params(names) -> list:
    """Parametrize values for scenario names: the ones whose shared data is absent are skipped."""
    return [pytest.param(n, marks=needs_shared_data(n)) for n in names]


def load_or_skip(name: str) -> Scenario:
    """load_scenario(name), skipping the test when the scenario's shared data is absent."""
    require_shared_data(name)
    return load_scenario(name)


# ----------------------------------------------------------------------------- scenarios

# The smallest valid scenario file: one 8x8 cluster, one task type (tests append or replace lines).
TINY_SCENARIO = """
name = "tiny"
resources = ["cpu", "gpu"]
grid_max = {cpu = 8, gpu = 8}
[arrivals]
process = "poisson"
rate = 1.0
tasks = 10
[[clusters]]
name = "a"
nodes = [{cpu = 8, gpu = 8}]
[[task_types]]
name = "IMG"
minimum = {cpu = 2, gpu = 1}
progress = {model = "synthetic", base = 0.25}
"""


def small(name: str, tasks: int = 30, **changes) -> Scenario:
    sc = load_or_skip(name)
    return dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=tasks), **changes)


def workload(scenario: Scenario, tasks: list[tuple[int, str, list[int]]]) -> Workload:
    """tasks: (arrival slot, type name, visible cluster indices)."""
    names = [t.name for t in scenario.task_types]
    vis = np.zeros((len(tasks), scenario.num_clusters), dtype=bool)
    for i, (_, _, clusters) in enumerate(tasks):
        vis[i, clusters] = True
    return Workload(
        arrival_slot=np.array([t[0] for t in tasks], dtype=np.int64),
        task_type=np.array([names.index(t[1]) for t in tasks], dtype=np.int64),
        visible=vis, work=np.ones(len(tasks)), deadline=np.full(len(tasks), -1, dtype=np.int64))


def engine_with(name: str, tasks: list[tuple[int, str, list[int]]], strict: bool = True, **changes) -> Engine:
    sc = load_or_skip(name)
    if changes:
        sc = dataclasses.replace(sc, **changes)
    eng = Engine(sc, strict=strict)
    eng.reset(0, workload=workload(sc, tasks))
    return eng


def idle(eng: Engine) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.full(eng.N, -1, dtype=np.int64), np.zeros(eng.N, dtype=np.int64),
            np.zeros((eng.N, eng.R), dtype=np.int64))


def start(eng: Engine, starts: dict[int, tuple[int, int, list[int]]], realloc=None) -> bool:
    """Play one round; starts maps agent -> (window place, node, allocation)."""
    task, node, alloc = idle(eng)
    for a, (place, n, al) in starts.items():
        task[a], node[a], alloc[a] = place, n, al
    return eng.play_round(task, node, alloc, realloc)


def end_slot(eng: Engine) -> None:
    assert eng.play_round(*idle(eng)) is True


def random_feasible_env_action(obs: dict, rng: np.random.Generator) -> dict:
    """A uniformly random action among those the masks allow (PettingZoo Dict format)."""
    row = {k: v[None] for k, v in obs.items()}  # one agent's observation as a batch of one
    start = random_start(row, 0, rng)
    if start is None:
        return {"task": 0, "node": 0, "alloc": np.zeros(obs["alloc_low"].shape[1], dtype=np.int64)}
    place, node, alloc = start
    return {"task": place + 1, "node": node, "alloc": alloc}


class ServiceCheck:
    """A Tiresias policy wrapped so that, after it saw each round and before the round is played,
    its attained service of every running task must equal `truth()[task]` (what the engine gave)."""

    def __init__(self, policy, truth):
        self.policy, self.truth, self.checked = policy, truth, 0

    def reset(self, seed: int) -> None:
        self.policy.reset(seed)

    def act(self, obs):
        out = self.policy.act(obs)
        ids, given = obs["running_id"], self.truth()
        for i in range(ids.shape[0]):
            live = ids[i][ids[i] >= 0]
            assert self.policy.service.of(i, live).tolist() == given[live].tolist()
            self.checked += int((given[live] > 0).sum())
        return out


def default_sigint() -> None:
    """`preexec_fn` of a subprocess that a test stops with Ctrl-C: SIGINT at its default action, as in
    a terminal's foreground job. A shell runs background jobs with SIGINT ignored, the child inherits
    that, and Python then installs no KeyboardInterrupt handler: the suite run from `cmd &` (or a CI
    runner that does so) would see Ctrl-C ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


# ----------------------------------------------------------------------------- exported vs eager policies
def distinct_workload(sc, seed: int, low: float = 1.0, spread: float = 0.2) -> Workload:
    """The seed's arrival stream with a slightly different amount of work per task. With all work
    equal, tasks of one type that arrive together and are seen by the same clusters are twins the
    network cannot tell apart, scored 1e-7 apart by PyTorch and onnxruntime. The shared tie rule
    picks the same twin in both (tests/test_ties.py plays episodes with twins); the lockstep
    comparison below is kept free of them, so that a failure points at the program, not at a tie."""
    from tapfinger.sim.workload import make_workload

    wl = make_workload(sc, seed)
    return dataclasses.replace(wl, work=low + spread * np.random.default_rng(seed).random(wl.num_tasks))


def play_in_lockstep(sc, eager, others, seed: int, workload: Workload | None = None) -> Engine:
    """Drive a strict engine with the eager policy's actions (declines included); every other policy
    must choose the same actions in every round. The finished engine (every task finished or declined)."""
    from envs.observations import build_observations

    eng = Engine(sc, strict=True)
    eng.reset(seed, workload=workload if workload is not None else distinct_workload(sc, seed))
    for p in (eager, *others):
        p.reset(seed)
    while not eng.done:
        obs = build_observations(eng)
        a = eager.act(obs)
        for p in others:
            b = p.act(obs)
            for field in ("task", "node", "alloc"):
                assert np.array_equal(getattr(a, field), getattr(b, field)), \
                    f"{p.name} differs from eager at slot {eng.slot} round {eng.round}: {field} " \
                    f"{getattr(b, field).tolist()} vs {getattr(a, field).tolist()}"
            assert (a.decline is None) == (b.decline is None) and (
                a.decline is None or np.array_equal(a.decline, b.decline)), (p.name, "decline", eng.slot)
        a.play(eng)
    assert eng.finished_count + eng.declined_count == eng.T
    return eng
