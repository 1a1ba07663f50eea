"""Arrival streams: which tasks arrive when, of which type, seen by which clusters.

The whole stream of an episode is drawn up front from its own generator, so it depends on
the seed alone and never on the scheduler's actions (common random numbers). A scenario's
`[uncertainty]` (each task's hidden speed factor and its work estimate's error) is drawn after
the arrivals from a second generator of its own, so that a scenario and its uncertain variant
have the same arrivals, types and visibility for every seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from tapfinger.sim.scenario import MAX_RATE, MAX_SIGMA, MAX_SLOTS, MAX_TASKS, Scenario, ScenarioError

# Entropy words of the two generators of an episode (with its seed): arrivals, then hidden truth.
ARRIVAL_STREAM = 0x7A9F
HIDDEN_TRUTH_STREAM = 0x5EC2E7
DEADLINE_STREAM = 0xDEAD11


@dataclass(frozen=True)
class Workload:
    arrival_slot: np.ndarray  # [T] int, non-decreasing
    task_type: np.ndarray  # [T] int
    visible: np.ndarray  # [T, N] bool
    # [T] float, the TRUE amount of work relative to the task type (1 = as profiled): what the
    # engine runs, and what offline bounds and the exact optimum plan with.
    work: np.ndarray
    deadline: np.ndarray  # [T] int, absolute slot by which the task should finish, -1 = none
    # [T] float, the work a scheduler is told (observations' `window_work`), drawn by
    # `with_hidden_truth`; None = told exactly `work` (no uncertainty). None rather than a copy, so
    # that a workload built or changed in code (`dataclasses.replace(wl, work=...)`) stays known
    # exactly unless an estimate is given: `known_work` is what readers use.
    work_estimate: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.work_estimate is not None and np.shape(self.work_estimate) != np.shape(self.work):
            raise ValueError(f"work_estimate has shape {np.shape(self.work_estimate)} but work has "
                             f"{np.shape(self.work)}. Fix: give one estimate per task, or none (= work)")

    @property
    def known_work(self) -> np.ndarray:
        """[T] float, the work schedulers are told: the estimate, or the work itself without one."""
        return np.asarray(self.work if self.work_estimate is None else self.work_estimate, dtype=np.float64)

    @property
    def num_tasks(self) -> int:
        return int(self.arrival_slot.shape[0])


def _visible_sets(rng: np.random.Generator, count: int, num_clusters: int, mode: str,
                  home: np.ndarray | None = None) -> np.ndarray:
    vis = np.zeros((count, num_clusters), dtype=bool)
    if mode == "all":
        vis[:] = True
    elif mode == "home":
        homes = home if home is not None else rng.integers(num_clusters, size=count)
        vis[np.arange(count), homes] = True
    else:  # random-subset: k uniform on {1..N}, then a uniform k-subset
        for i in range(count):
            k = int(rng.integers(1, num_clusters + 1))
            vis[i, rng.choice(num_clusters, size=k, replace=False)] = True
    return vis


def poisson_workload(scenario: Scenario, rng: np.random.Generator) -> Workload:
    """Per slot Poisson(rate) new tasks until the episode's task count; types uniform."""
    _check_poisson(scenario)
    total = scenario.arrivals.tasks
    n_clusters = scenario.num_clusters
    slots: list[int] = []
    types: list[int] = []
    vis_rows: list[np.ndarray] = []
    slot = 0
    while len(slots) < total:
        if slot >= MAX_SLOTS:
            raise ScenarioError(f"scenario {scenario.source}: only {len(slots)} of {total} tasks arrived in "
                                f"{MAX_SLOTS} slots at rate {scenario.arrivals.rate:g}. Fix: raise arrivals.rate "
                                f"or lower arrivals.tasks")
        n = min(int(rng.poisson(scenario.arrivals.rate)), total - len(slots))
        for _ in range(n):
            slots.append(slot)
            types.append(int(rng.integers(len(scenario.task_types))))
            vis_rows.append(_visible_sets(rng, 1, n_clusters, scenario.visibility)[0])
        slot += 1
    return Workload(
        arrival_slot=np.asarray(slots, dtype=np.int64),
        task_type=np.asarray(types, dtype=np.int64),
        visible=np.asarray(vis_rows, dtype=bool).reshape(total, n_clusters),
        work=np.ones(total),
        deadline=np.full(total, -1, dtype=np.int64),
    )


def _check_poisson(scenario: Scenario) -> None:
    """The limits a TOML file is held to (tapfinger/sim/scenario_toml.py), for scenarios built
    in code (`with_overrides`): past them the stream below would take hours and all memory."""
    arr = scenario.arrivals
    if not 1 <= arr.tasks <= MAX_TASKS or not (0 < arr.rate <= MAX_RATE):  # NaN fails the rate test
        raise ScenarioError(f"scenario {scenario.source}: arrivals.tasks = {arr.tasks}, arrivals.rate = "
                            f"{arr.rate:g}. Fix: use 1 <= tasks <= {MAX_TASKS} and 0 < rate <= {MAX_RATE:g}")


def make_workload(scenario: Scenario, seed: int) -> Workload:
    """The workload of an episode: a function of the scenario and the seed only."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, ARRIVAL_STREAM]))
    if scenario.arrivals.process == "poisson":
        wl = poisson_workload(scenario, rng)
    else:
        from tapfinger.sim.traces import trace_workload  # only trace scenarios need the reader

        wl = trace_workload(scenario, rng)
    return with_hidden_truth(with_deadlines(wl, scenario, seed), scenario, seed)


def with_deadlines(wl: Workload, scenario: Scenario, seed: int) -> Workload:
    """`wl` with the scenario's deadline rule applied to every task that has no deadline yet (a
    trace's own `deadline_seconds` are kept). ElasticFlow's rule: deadline = arrival +
    floor(U(slack_low, slack_high) x duration), at least one slot, where duration is the slots the
    task needs alone at its type's requested allocation on a cloud node (its recorded work, the
    size its user knows); a share 1 - fraction of the tasks is best-effort. Drawn from a stream of
    its own, two uniforms per task in task order, so the arrivals are those without the rule.
    Unchanged (the same object) when the rule is "none"."""
    if scenario.deadlines.rule == "none" or wl.num_tasks == 0:
        return wl
    return apply_deadline_rule(wl, scenario, np.random.default_rng(np.random.SeedSequence([seed, DEADLINE_STREAM])))


def apply_deadline_rule(wl: Workload, scenario: Scenario, rng: np.random.Generator) -> Workload:
    """`with_deadlines` with the uniforms drawn from `rng` (a planner's sampled future uses its own)."""
    rule = scenario.deadlines
    if rule.rule == "none" or wl.num_tasks == 0:
        return wl
    from tapfinger.sim.progress import slots_to_finish  # here: the tables need a built scenario
    from tapfinger.sim.tables import static_tables

    st = static_tables(scenario)
    req = np.asarray([t.requested() for t in scenario.task_types], dtype=np.int64)[wl.task_type]
    c = np.minimum(req[:, st.cpu], st.grid_max[st.cpu])
    g = np.minimum(req[:, st.gpu], st.grid_max[st.gpu])
    duration = slots_to_finish(st.weight[wl.task_type, c, g], st.base[wl.task_type, c, g],
                               np.asarray(wl.work, dtype=np.float64))
    u = rng.random((wl.num_tasks, 2))
    slack = rule.slack_low + (rule.slack_high - rule.slack_low) * u[:, 0]
    offset = np.maximum(np.floor(slack * np.minimum(duration, MAX_SLOTS)), 1).astype(np.int64)
    drawn = np.where(u[:, 1] < rule.fraction, wl.arrival_slot + offset, -1)
    return replace(wl, deadline=np.where(wl.deadline >= 0, wl.deadline, drawn).astype(np.int64))


def hidden_factors(scenario: Scenario, task_type: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per task, (s, e): the hidden speed factor and the estimate's error (`Uncertainty`).

    Drawn from their own generator, one (speed, estimate) pair of normals per task in task
    order, so that task i's factors depend on the seed and i only (not on the number of tasks,
    nor on the arrivals). Both are mean-one log-normals, LogNormal(-sigma^2 / 2, sigma), and s
    is scaled by its type's bias; a sigma of 0 gives a factor of exactly 1."""
    u = scenario.uncertainty
    _check_uncertainty(scenario)
    rng = np.random.default_rng(np.random.SeedSequence([seed, HIDDEN_TRUTH_STREAM]))
    z = rng.standard_normal((len(task_type), 2))
    bias = np.array([u.bias_of(t.name) for t in scenario.task_types])[task_type]
    speed = bias * np.exp(u.speed_sigma * z[:, 0] - u.speed_sigma ** 2 / 2)
    error = np.exp(u.work_sigma * z[:, 1] - u.work_sigma ** 2 / 2)
    return speed, error


def with_hidden_truth(wl: Workload, scenario: Scenario, seed: int) -> Workload:
    """`wl` (work as recorded: 1, or a trace's `work`) with the scenario's uncertainty applied:
    the engine runs `work / s`, schedulers are told `work * e`. The error multiplies the
    estimate, not the truth: the task's size is the recorded work (a trace records what actually
    ran; a user's estimate of it is what is noisy) and E[estimate | size] = size, so the estimate
    is unbiased, and with bias 1 so is the profiled speed (E[s] = 1). Unchanged (the same
    object) without uncertainty."""
    _check_uncertainty(scenario)  # first: a NaN or negative sigma would read as "inactive"
    if not scenario.uncertainty.active:
        return wl
    speed, error = hidden_factors(scenario, wl.task_type, seed)
    work = np.asarray(wl.work, dtype=np.float64)
    return replace(wl, work=work / speed, work_estimate=work * error)


def _check_uncertainty(scenario: Scenario) -> None:
    """The bounds a TOML file is held to (tapfinger/sim/scenario_toml.py), for scenarios built in
    code: a NaN sigma or an unknown type's bias would otherwise pass silently."""
    u = scenario.uncertainty
    names = {t.name for t in scenario.task_types}
    for key, sigma in (("speed_sigma", u.speed_sigma), ("work_sigma", u.work_sigma)):
        if not 0.0 <= sigma <= MAX_SIGMA:  # NaN fails too
            raise ScenarioError(f"scenario {scenario.source}: uncertainty.{key} = {sigma}. Fix: use a "
                                f"finite value in [0, {MAX_SIGMA:g}]")
    for name, factor in u.speed_bias:
        if name not in names or not (0.0 < factor < np.inf):
            raise ScenarioError(f"scenario {scenario.source}: uncertainty.speed_bias {name} = {factor}. Fix: "
                                f"use task types of the scenario ({', '.join(sorted(names))}) and finite factors > 0")


def no_tasks(num_clusters: int) -> Workload:
    """A workload without tasks (a fork's empty future, a planner's future past the episode's count)."""
    return Workload(arrival_slot=np.zeros(0, dtype=np.int64), task_type=np.zeros(0, dtype=np.int64),
                    visible=np.zeros((0, num_clusters), dtype=bool), work=np.zeros(0),
                    deadline=np.zeros(0, dtype=np.int64))
