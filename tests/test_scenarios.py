"""Scenario loading: built-ins, TOML files, and every validation error."""

from __future__ import annotations

import dataclasses

import pytest

from tapfinger.cli.main import main
from tapfinger.sim.progress import ProfileError, read_profile
from tapfinger.sim.geo.scenario import geo_builtin_names
from tapfinger.sim.scenario import ScenarioError, builtin_names, load_scenario
from tests.helpers import TINY_SCENARIO, needs_shared_data, require_shared_data, scenario_params

GOOD = TINY_SCENARIO


def write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


def test_builtins_are_listed():
    names = builtin_names()
    for n in ["synthetic-3", "synthetic-6", "hetero-6", "trace-3", "trace-6", "testbed-3", "edge-default"]:
        assert n in names


@pytest.mark.parametrize("name", scenario_params(builtin_names()))
def test_builtin_loads(name):
    assert load_scenario(name).name == name


def test_reference_settings_match_design():
    h = load_scenario("hetero-6")
    assert [c.capacity() for c in h.clusters] == [(4, 4), (8, 8), (12, 12), (16, 16), (24, 24), (32, 32)]
    assert (h.arrivals.rate, h.arrivals.tasks, h.switch_weight, h.grid_max) == (6, 384, 1.0, (16, 16))
    require_shared_data("trace-3")
    t = load_scenario("trace-3")
    assert (t.arrivals.rate, t.arrivals.tasks, t.grid_max, t.switch_weight) == (1.5, 1000, (16, 8), 0.5)
    assert [c.capacity() for c in load_scenario("testbed-3").clusters] == [(16, 4), (16, 4), (16, 8)]


def test_edge_default_needs_nothing_outside_the_package():
    sc = load_scenario("edge-default")
    assert sc.resources == ("cpu", "gpu", "mem") and not sc.profile
    assert any(len(c.nodes) > 1 for c in sc.clusters)


def test_file_scenario_loads(tmp_path):
    sc = load_scenario(write(tmp_path, GOOD))
    assert sc.name == "tiny" and sc.clusters[0].nodes == ((8, 8),)


def test_example_file_loads():
    from pathlib import Path
    sc = load_scenario(Path(__file__).parent.parent / "examples" / "custom-scenario.toml")
    assert sc.num_clusters >= 2


def test_show_round_trips_through_a_file(tmp_path, capsys):
    assert main(["scenarios", "--show", "hetero-6"]) == 0
    text = capsys.readouterr().out
    assert load_scenario(write(tmp_path, text)) == load_scenario("hetero-6")


def test_scenarios_command_lists_one_line_each(capsys):
    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # the edge built-ins, then the geo ones (issue 16), one line each
    assert len(lines) == len(builtin_names()) + len(geo_builtin_names())
    assert [ln.split()[0] for ln in lines] == builtin_names() + geo_builtin_names()


BAD = [
    (GOOD.replace('name = "tiny"\n', ""), "'name': is missing"),
    (GOOD.replace('rate = 1.0', 'rate = -1.0'), "'arrivals.rate': must be > 0"),
    (GOOD.replace('rate = 1.0', 'rate = "fast"'), "'arrivals.rate': must be int or float"),
    (GOOD.replace('tasks = 10', 'tasks = 0'), "'arrivals.tasks': must be an integer >= 1"),
    (GOOD.replace('process = "poisson"', 'process = "weibull"'), "'arrivals.process': unknown value"),
    (GOOD.replace('nodes = [{cpu = 8, gpu = 8}]', 'nodes = [{cpu = -8, gpu = 8}]'), "clusters[0].nodes[0].cpu"),
    (GOOD.replace('nodes = [{cpu = 8, gpu = 8}]', 'nodes = []'), "'clusters[0].nodes': is empty"),
    (GOOD.replace('nodes = [{cpu = 8, gpu = 8}]', 'nodes = [{cpu = 8, gpu = 8, tpu = 1}]'), "unknown resource"),
    (GOOD.replace('minimum = {cpu = 2, gpu = 1}', 'minimum = {cpu = 2, gpu = 9}'), "exceeds grid_max.gpu"),
    (GOOD.replace('grid_max = {cpu = 8, gpu = 8}', 'grid_max = {cpu = 8, gpu = 0}'), "'grid_max.gpu': must be an integer >= 1"),
    (GOOD.replace('resources = ["cpu", "gpu"]', 'resources = ["cpu"]'), "lacks 'gpu'"),
    (GOOD.replace('model = "synthetic", base = 0.25', 'model = "magic"'), "'task_types[0].progress.model': unknown value"),
    (GOOD.replace('base = 0.25', 'base = 0.0'), "never progresses"),
    (GOOD.replace('model = "synthetic", base = 0.25', 'model = "profile"'), "'profile': is missing"),
    (GOOD + '\n[arrivals\n', "not valid TOML"),
    (GOOD.replace('name = "tiny"', 'name = "tiny"\nvisibility = "some"'), "'visibility': unknown value"),
    (GOOD.replace('name = "tiny"', 'name = "tiny"\nswitch_weight = 2'), "'switch_weight': must be <= 1.0"),
    (GOOD.replace('name = "tiny"', 'name = "tiny"\nwindow_size = 0'), "'window_size': must be an integer >= 1"),
    (GOOD.replace('name = "tiny"', 'name = "tiny"\nwindow = 3'), "unknown key(s) ['window']"),
    (GOOD.replace('nodes = [{cpu = 8, gpu = 8}]', 'nodes = [{cpu = 1, gpu = 8}]'), "fits on no node"),
    (GOOD.replace('[[task_types]]', '[[clusters]]\nname = "a"\nnodes = [{cpu = 8, gpu = 8}]\n[[task_types]]'),
     "cluster names repeat"),
    (GOOD.replace('name = "tiny"', 'name = "tiny"\nallow_preemption = "yes"'), "'allow_preemption': must be bool"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_validation_errors_name_file_key_and_fix(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    msg = str(err.value)
    assert message in msg
    assert str(path) in msg
    assert "Fix:" in msg


def test_unknown_scenario_name():
    with pytest.raises(ScenarioError, match="not a built-in name and no such file"):
        load_scenario("no-such-scenario")


def test_missing_shared_profile_says_how_to_point_elsewhere(monkeypatch, tmp_path):
    import tapfinger.sim.scenario as scen
    monkeypatch.setattr(scen, "shared_data_dirs", lambda: [tmp_path / "nowhere"])
    with pytest.raises(ScenarioError, match="TAPFINGER_SHARED_DATA"):
        load_scenario("trace-3")


@needs_shared_data("trace-3")
def test_shared_profile_can_be_pointed_elsewhere(monkeypatch, tmp_path):
    import shutil
    target = tmp_path / "data" / "tapfinger-testbed"
    target.mkdir(parents=True)
    shutil.copy(load_scenario("trace-3").profile, target / "trace_container.csv")
    monkeypatch.setenv("TAPFINGER_SHARED_DATA", str(tmp_path / "data"))
    assert load_scenario("trace-3").profile == str(target / "trace_container.csv")


@needs_shared_data("trace-3")
def test_profile_reader_averages_runs():
    table = read_profile(load_scenario("trace-3").profile)
    assert table.tasks() == ["audio", "lm", "mnist"]
    assert table.lookup("mnist", 1, 1) == pytest.approx((101.334374 + 101.870331) / 2)


@pytest.mark.parametrize("content, message", [
    ("", "is empty"),
    ("mnist,1\n", "expected at least 4 columns"),
    ("mnist,one,1,10\n", "must be integers"),
    ("mnist,1,1,-5\n", "seconds > 0"),
    ("task,cpus,secs,gpus\nmnist,1,1,10\n", "header must start with"),
])
def test_bad_profile_files(tmp_path, content, message):
    path = tmp_path / "p.csv"
    path.write_text(content)
    with pytest.raises(ProfileError, match=message):
        read_profile(path)


@needs_shared_data("trace-3")
def test_profile_missing_cell_is_named(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("mnist,1,1,10\n")
    sc = load_scenario("trace-3")
    sc = dataclasses.replace(sc, profile=str(path), task_types=sc.task_types[:1])
    from tapfinger.sim.engine import Engine
    with pytest.raises(ProfileError, match="no measurement for task 'mnist' with 1 CPUs and 2 GPUs"):
        Engine(sc)


def test_edge_loader_refuses_a_geo_scenario_naming_the_command_that_runs_it(tmp_path):
    # issue 16: a geo scenario is another model; the edge commands must say so, not fail on `family`
    from tapfinger.sim.geo.scenario import geo_builtin_text

    path = tmp_path / "mine.toml"
    path.write_text(geo_builtin_text("geo-6"), encoding="utf-8")
    for spec in ("geo-6", str(path)):
        with pytest.raises(ScenarioError, match=r"geo-distributed scenario .*tapfinger evaluate --scenario"):
            load_scenario(spec)
