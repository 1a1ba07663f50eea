"""Uncertain resource sensitivity (`[uncertainty]`, issue 13 item 4): hidden per-task speed
factors and work estimates. What is tested: the TOML table's validation; that the hidden truth
comes from a stream of its own (the same arrivals as the base scenario); that schedulers see only
the estimate; that the engine runs the truth; determinism; the heuristics on both built-ins; and
that the speed factor's mean is its bias."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from agents.registry import make_policy, policy_class, policy_names
from envs.episode import run_episode
from envs.observations import build_observations
from tapfinger.cli.main import main
from tapfinger.evaluation.bounds import lower_bound
from tapfinger.sim.engine import Engine
from tapfinger.sim.progress import slots_to_finish
from tapfinger.sim.scenario import ScenarioError, Uncertainty, load_scenario
from tapfinger.sim.workload import Workload, hidden_factors, make_workload, with_hidden_truth
from tests.helpers import TINY_SCENARIO, load_or_skip, needs_shared_data, scenario_params

GOOD = TINY_SCENARIO + """[[task_types]]
name = "LM"
minimum = {cpu = 2, gpu = 1}
progress = {model = "synthetic", gpu_scale = 16.0}
"""
PAIRS = [("hetero-6", "hetero-6-uncertain"), ("trace-3", "trace-3-uncertain")]
HEURISTICS = [n for n in policy_names() if not policy_class(n).learned]


def load_text(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_scenario(path)


def with_uncertainty(name: str, tasks: int | None = None, **fields) -> tuple:
    """(scenario, the same with `[uncertainty]` fields), optionally with fewer tasks."""
    sc = load_or_skip(name)
    if tasks is not None:
        sc = dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=tasks))
    return sc, dataclasses.replace(sc, uncertainty=Uncertainty(**fields))


def shrunk(name: str, tasks: int):
    sc = load_or_skip(name)
    return dataclasses.replace(sc, arrivals=dataclasses.replace(sc.arrivals, tasks=tasks))


# ------------------------------------------------------------------------------ the TOML table


def test_table_is_read_with_biases_in_task_type_order(tmp_path):
    sc = load_text(tmp_path, GOOD + "[uncertainty]\nspeed_sigma = 0.4\nwork_sigma = 0.2\n"
                                    "speed_bias = {LM = 0.7, IMG = 1.5}\n")
    assert sc.uncertainty == Uncertainty(0.4, 0.2, (("IMG", 1.5), ("LM", 0.7)))
    assert sc.uncertainty.bias_of("LM") == 0.7 and sc.uncertainty.active
    assert load_text(tmp_path, GOOD).uncertainty == Uncertainty()  # absent: none
    assert not load_text(tmp_path, GOOD + "[uncertainty]\n").uncertainty.active


@pytest.mark.parametrize("name", scenario_params(["hetero-6-uncertain", "trace-3-uncertain"]))
def test_built_ins_are_listed_with_their_uncertainty_and_show_round_trips(tmp_path, capsys, name):
    assert main(["scenarios"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith(name + " "))
    u = load_scenario(name).uncertainty
    assert f"uncertain: speed sigma {u.speed_sigma:g}, work sigma {u.work_sigma:g}" in line
    assert main(["scenarios", "--show", name]) == 0
    assert load_text(tmp_path, capsys.readouterr().out) == load_scenario(name)


BAD = [
    ("speed_sigma = -0.1", "'uncertainty.speed_sigma': must be >= 0.0"),
    ("speed_sigma = 3.5", "'uncertainty.speed_sigma': must be <= 3.0"),
    ("work_sigma = nan", "'uncertainty.work_sigma': must be a finite number"),
    ("work_sigma = inf", "'uncertainty.work_sigma': must be a finite number"),
    ('work_sigma = "high"', "'uncertainty.work_sigma': must be int or float"),
    ("speed_bias = {VIDEO = 0.5}", "'uncertainty.speed_bias': unknown task type(s) ['VIDEO']"),
    ("speed_bias = {LM = 0}", "'uncertainty.speed_bias.LM': must be > 0.0"),
    ("speed_bias = {LM = -2}", "'uncertainty.speed_bias.LM': must be > 0.0"),
    ("speed_bias = {LM = inf}", "'uncertainty.speed_bias.LM': must be a finite number"),
    ("speed_bias = 0.7", "'uncertainty.speed_bias': must be dict"),
    ("speed_sgima = 0.4", "unknown key(s) ['speed_sgima'] at uncertainty"),
]


@pytest.mark.parametrize("line,message", BAD, ids=[b[0] for b in BAD])
def test_bad_tables_name_file_key_problem_and_fix(tmp_path, line, message):
    with pytest.raises(ScenarioError) as err:
        load_text(tmp_path, GOOD + f"[uncertainty]\n{line}\n")
    text = str(err.value)
    assert message in text and "s.toml" in text and "Fix:" in text, text


def test_uncertainty_must_be_a_table(tmp_path):
    with pytest.raises(ScenarioError, match="'uncertainty': must be dict.*Fix: write \\[uncertainty\\] as a table"):
        load_text(tmp_path, GOOD.replace('name = "tiny"', 'name = "tiny"\nuncertainty = 0.4'))


@pytest.mark.parametrize("change", [{"speed_sigma": math.nan}, {"work_sigma": -1.0},
                                    {"speed_bias": (("VIDEO", 0.5),)}, {"speed_bias": (("LM", 0.0),)}])
def test_scenarios_built_in_code_are_checked_when_drawn(change):
    _, bad = with_uncertainty("hetero-6", tasks=5, **change)
    with pytest.raises(ScenarioError, match="uncertainty.*Fix:"):
        make_workload(bad, 0)


# ------------------------------------------------------------------------------ common random numbers


@pytest.mark.parametrize("base,variant", [pytest.param(b, v, marks=needs_shared_data(v)) for b, v in PAIRS])
def test_variant_has_the_arrivals_types_and_visibility_of_its_base(base, variant):
    sb, sv = load_or_skip(base), load_or_skip(variant)
    assert sv.uncertainty.active and not sb.uncertainty.active
    # the variant is its base with an [uncertainty] table: nothing else differs
    assert dataclasses.replace(sv, name=sb.name, description=sb.description, uncertainty=Uncertainty()) == sb
    for seed in (0, 1, 17):
        wb, wv = make_workload(sb, seed), make_workload(sv, seed)
        np.testing.assert_array_equal(wv.arrival_slot, wb.arrival_slot)
        np.testing.assert_array_equal(wv.task_type, wb.task_type)
        np.testing.assert_array_equal(wv.visible, wb.visible)
        np.testing.assert_array_equal(wv.deadline, wb.deadline)
        assert not np.array_equal(wv.work, wb.work) and not np.array_equal(wv.known_work, wb.known_work)


def test_trace_arrivals_keep_their_rows_and_the_factors_apply_to_the_trace_work():
    base, unc = with_uncertainty("philly-edge", speed_sigma=0.4, work_sigma=0.3)
    wb, wu = make_workload(base, 4), make_workload(unc, 4)
    np.testing.assert_array_equal(wu.arrival_slot, wb.arrival_slot)
    np.testing.assert_array_equal(wu.visible, wb.visible)
    speed, error = hidden_factors(unc, wb.task_type, 4)
    assert wb.work.min() < 0.5 and wb.work.max() > 2  # recorded sizes vary: the factors multiply them
    np.testing.assert_allclose(wu.work, wb.work / speed, rtol=1e-15)
    np.testing.assert_allclose(wu.known_work, wb.work * error, rtol=1e-15)


@pytest.mark.parametrize("name", ["hetero-6", "edge-default", "philly-edge"])
def test_without_uncertainty_estimates_are_the_work_and_nothing_changes(name):
    sc = shrunk(name, 40) if name != "philly-edge" else load_scenario(name)
    wl = make_workload(sc, 2)
    assert wl.work_estimate is None and with_hidden_truth(wl, sc, 2) is wl
    np.testing.assert_array_equal(wl.known_work, wl.work)
    eng = Engine(sc)
    eng.reset(2)
    np.testing.assert_array_equal(eng.work_estimate, eng.work)


def test_a_bias_of_one_is_no_uncertainty():
    _, unc = with_uncertainty("hetero-6", tasks=30, speed_bias=(("LM", 1.0),))
    assert not unc.uncertainty.active
    assert make_workload(unc, 3).work_estimate is None


def test_workload_built_in_code_is_known_exactly_unless_given_an_estimate():
    wl = Workload(arrival_slot=np.zeros(2, dtype=np.int64), task_type=np.zeros(2, dtype=np.int64),
                  visible=np.ones((2, 1), dtype=bool), work=np.array([1.0, 2.0]), deadline=np.full(2, -1))
    # changing the work in code keeps the scheduler told the (new) work, as before estimates existed
    np.testing.assert_array_equal(dataclasses.replace(wl, work=np.array([3.0, 0.5])).known_work, [3.0, 0.5])
    with pytest.raises(ValueError, match="work_estimate has shape .*Fix"):
        dataclasses.replace(wl, work_estimate=np.ones(3))


# ------------------------------------------------------------------------------ what schedulers see


def engines_differing_in_hidden_truth(seed: int = 5) -> tuple[Engine, Engine, Workload]:
    """Two engines of hetero-6-uncertain whose workloads differ only in the true work."""
    sc = shrunk("hetero-6-uncertain", 60)
    wl = make_workload(sc, seed)
    other = dataclasses.replace(wl, work=wl.work[::-1].copy())  # other truths, same estimates
    assert not np.array_equal(other.work, wl.work)
    engines = []
    for w in (wl, other):
        eng = Engine(sc)
        eng.reset(seed, workload=w)
        engines.append(eng)
    return engines[0], engines[1], wl


def test_the_hidden_truth_never_reaches_the_observations():
    a, b, wl = engines_differing_in_hidden_truth()
    idle = (np.full(a.N, -1, dtype=np.int64), np.zeros(a.N, dtype=np.int64), np.zeros((a.N, a.R), dtype=np.int64))
    for _ in range(4):  # the first observations, and those of a few idle slots as windows fill
        oa, ob = build_observations(a), build_observations(b)
        assert oa.keys() == ob.keys()
        for key in oa:
            np.testing.assert_array_equal(oa[key], ob[key], err_msg=key)
        a.play_round(*idle)
        b.play_round(*idle)
    win = oa["window_id"]
    shown = win >= 0
    assert shown.sum() > 10
    np.testing.assert_array_equal(oa["window_work"][shown], wl.known_work[win[shown]].astype(np.float32))
    assert not np.allclose(oa["window_work"][shown], wl.work[win[shown]].astype(np.float32))


def test_progress_of_a_running_task_follows_the_true_work():
    # speed_bias 2 with no spread: every IMG task runs exactly twice as fast as its profile says
    _, unc = with_uncertainty("hetero-6", speed_bias=(("IMG", 2.0),))
    one_img = Workload(arrival_slot=np.zeros(1, dtype=np.int64), task_type=np.zeros(1, dtype=np.int64),
                       visible=np.ones((1, unc.num_clusters), dtype=bool), work=np.ones(1), deadline=np.full(1, -1))
    wl = with_hidden_truth(one_img, unc, 0)
    assert wl.work.tolist() == [0.5] and wl.known_work.tolist() == [1.0]
    eng = Engine(unc, strict=True)
    eng.reset(0, workload=wl)
    c, g = 2, 2  # cluster 0 holds 4 cpu / 4 gpu
    none = np.full(eng.N, -1, dtype=np.int64)
    task, alloc = none.copy(), np.zeros((eng.N, eng.R), dtype=np.int64)
    task[0], alloc[0] = 0, (c, g)
    assert not eng.play_round(task, np.zeros(eng.N, dtype=np.int64), alloc)
    slots = 0
    while not eng.done:
        eng.play_round(none, np.zeros(eng.N, dtype=np.int64), alloc)
        slots += 1
    weight, base = eng.static.weight[0, c, g], eng.static.base[0, c, g]
    assert slots == slots_to_finish(weight, base, 0.5)
    assert slots < slots_to_finish(weight, base, 1.0)  # fewer than the profile (and the estimate) says


# ------------------------------------------------------------------------------ determinism, heuristics


def test_hidden_factors_depend_on_the_seed_and_task_index_only():
    _, unc = with_uncertainty("hetero-6", speed_sigma=0.4, work_sigma=0.3)
    types = np.arange(200) % 2
    s1, e1 = hidden_factors(unc, types, 9)
    s2, e2 = hidden_factors(unc, types, 9)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(e1, e2)
    s_short, e_short = hidden_factors(unc, types[:50], 9)  # fewer tasks: the same first factors
    np.testing.assert_array_equal(s_short, s1[:50])
    np.testing.assert_array_equal(e_short, e1[:50])
    s3, _ = hidden_factors(unc, types, 10)
    assert not np.allclose(s3, s1)


def test_episodes_are_deterministic_per_seed():
    sc = shrunk("hetero-6-uncertain", 80)
    a = run_episode(sc, make_policy("greedy", sc), seed=7).records
    b = run_episode(sc, make_policy("greedy", sc), seed=7).records
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    c = run_episode(sc, make_policy("greedy", sc), seed=8).records
    assert not np.array_equal(a["jct"], c["jct"])


@pytest.mark.parametrize("name", scenario_params(["hetero-6-uncertain", "trace-3-uncertain"]))
@pytest.mark.parametrize("policy", HEURISTICS)
def test_every_heuristic_runs_without_invalid_actions_and_above_the_true_bound(name, policy):
    sc = shrunk(name, 40)  # small: `rollout` plays whole futures ahead in every round
    eng = Engine(sc, strict=True)  # an action the masks forbid raises
    res = run_episode(sc, make_policy(policy, sc), seed=1, engine=eng)
    assert not res.truncated and res.invalid_actions == 0
    assert (res.records["jct"] >= 1).all()
    # the bound is about what is achievable, so it is computed from the true work
    bound, _ = lower_bound(sc, eng.workload)
    assert (res.records["jct"] >= bound).all()


# ------------------------------------------------------------------------------ the draw's statistics


def test_speed_factor_mean_is_the_bias_and_the_estimate_error_mean_is_one():
    sigma, bias, n = 0.4, 0.7, 40_000
    _, unc = with_uncertainty("hetero-6", speed_sigma=sigma, work_sigma=sigma, speed_bias=(("LM", bias),))
    types = np.arange(n) % 2  # IMG, LM alternately
    speed, error = hidden_factors(unc, types, 12345)
    sd_one = math.sqrt(math.exp(sigma**2) - 1)  # sd of a mean-one log-normal
    for values, mean in ((speed[types == 0], 1.0), (speed[types == 1], bias), (error, 1.0)):
        se = mean * sd_one / math.sqrt(values.size)
        assert abs(values.mean() - mean) < 6 * se, (values.mean(), mean, se)
    # and the spread is the asked one: log s has standard deviation sigma
    assert abs(np.log(speed[types == 1]).std() - sigma) < 0.02
