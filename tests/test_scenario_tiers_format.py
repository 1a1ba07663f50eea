"""The scenario format's cloud-edge and deadline keys (issue 14): defaults, every validation
error (each names its key), capacity CSV files, and the built-in `cloud-edge`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from tapfinger.cli.main import main
from tapfinger.sim.scenario import (CapacitySchedule, Deadlines, ScenarioError, builtin_text, load_scenario,
                                    scenario_fingerprint)
from tests.helpers import TINY_SCENARIO

# A small scenario with every new key set: one cloud and one tidal edge cluster, a throughput type.
TIERS = """
name = "tiers"
resources = ["cpu", "gpu"]
grid_max = {cpu = 8, gpu = 8}
visibility = "all"
allow_decline = true
on_shrink = "shrink"
restart_seconds = 30
migration_seconds = 120.5
[arrivals]
process = "poisson"
rate = 1.0
tasks = 10
[deadlines]
rule = "elasticflow"
slack = [0.5, 1.5]
fraction = 0.8
[[clusters]]
name = "cloud"
kind = "cloud"
nodes = [{cpu = 8, gpu = 8}]
[[clusters]]
name = "edge"
kind = "edge"
nodes = [{cpu = 4, gpu = 1}, {cpu = 4, gpu = 1}]
capacity = {curve = "tidal", period_seconds = 86400, peak_load = 0.9, trough_ratio = 0.02, peak_seconds = 50400, start_seconds = 0}
[[task_types]]
name = "resnet"
minimum = {cpu = 2, gpu = 1}
request = {cpu = 2, gpu = 4}
edge_speed = 0.4
progress = {model = "throughput", gpus = [1, 2, 4], iterations_per_second = [6.84, 11.84, 18.30], iterations = 1000}
"""

TIDAL = ('capacity = {curve = "tidal", period_seconds = 86400, peak_load = 0.9, trough_ratio = 0.02, '
         'peak_seconds = 50400, start_seconds = 0}')
THROUGHPUT = 'progress = {model = "throughput", gpus = [1, 2, 4], iterations_per_second = [6.84, 11.84, 18.30], iterations = 1000}'


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path, text, **kwargs):
    return load_scenario(write(tmp_path, text), **kwargs)


def error_of(tmp_path, text) -> str:
    with pytest.raises(ScenarioError) as info:
        load_text(tmp_path, text)
    return str(info.value)


def sub(old: str, new: str, text: str = TIERS) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def with_capacity(cap: str) -> str:
    return sub(TIDAL, f"capacity = {cap}")


def with_progress(prog: str) -> str:
    return sub(THROUGHPUT, f"progress = {prog}")


# ------------------------------------------------------------------------------------ reading


def test_every_new_key_is_read(tmp_path):
    sc = load_text(tmp_path, TIERS)
    assert [c.kind for c in sc.clusters] == ["cloud", "edge"]
    assert sc.clusters[0].capacity_schedule == CapacitySchedule()
    assert sc.clusters[1].capacity_schedule == CapacitySchedule(
        "tidal", period_seconds=86400.0, peak_load=0.9, trough_ratio=0.02, peak_seconds=50400.0, start_seconds=0.0)
    t = sc.task_types[0]
    assert (t.edge_speed, t.request, t.requested()) == (0.4, (2, 4), (2, 4))
    p = t.progress
    assert (p.model, p.gpus, p.iterations_per_second, p.iterations) == ("throughput", (1, 2, 4), (6.84, 11.84, 18.3), 1000.0)
    assert type(p.gpus[0]) is int and type(p.iterations_per_second[0]) is float
    assert sc.deadlines == Deadlines("elasticflow", 0.5, 1.5, 0.8)
    assert (sc.allow_decline, sc.on_shrink, sc.restart_seconds, sc.migration_seconds) == (True, "shrink", 30.0, 120.5)
    assert sc.capacity_varies


def test_defaults_leave_a_scenario_as_before(tmp_path):
    sc = load_text(tmp_path, TINY_SCENARIO)
    assert sc.clusters[0].kind == "edge" and sc.clusters[0].capacity_schedule == CapacitySchedule()
    assert not sc.capacity_varies
    t = sc.task_types[0]
    assert (t.edge_speed, t.request, t.requested()) == (1.0, (), (2, 1))
    assert sc.deadlines == Deadlines() and sc.deadlines.rule == "none"
    assert (sc.allow_decline, sc.on_shrink, sc.restart_seconds, sc.migration_seconds) == (False, "preempt", 0.0, 0.0)


def test_optional_defaults_within_the_new_tables(tmp_path):
    text = sub('[deadlines]\nrule = "elasticflow"\nslack = [0.5, 1.5]\nfraction = 0.8', "[deadlines]")
    text = sub(TIDAL, 'capacity = {curve = "tidal", peak_load = 0.5, trough_ratio = 0.1, peak_seconds = 3600}', text)
    text = sub("request = {cpu = 2, gpu = 4}", "request = {gpu = 2}", text)
    sc = load_text(tmp_path, text)
    assert sc.deadlines == Deadlines("elasticflow", 0.5, 1.5, 1.0)  # a present table means ElasticFlow's rule
    cs = sc.clusters[1].capacity_schedule
    assert (cs.period_seconds, cs.start_seconds) == (86400.0, 0.0)
    assert sc.task_types[0].request == (2, 2)  # the unlisted cpu is the minimum
    assert load_text(tmp_path, sub(TIDAL, 'capacity = {curve = "constant"}')).clusters[1].capacity_schedule == CapacitySchedule()
    none = sub('rule = "elasticflow"\nslack = [0.5, 1.5]\nfraction = 0.8', 'rule = "none"')
    assert load_text(tmp_path, none).deadlines == Deadlines()


def test_varying_capacity_and_decline_combine_with_trace_arrivals(tmp_path):
    (tmp_path / "arrivals.csv").write_text("arrival_seconds,task_type\n0,resnet\n5,resnet\n")
    text = sub('process = "poisson"\nrate = 1.0\ntasks = 10', 'process = "trace"\ntrace = "arrivals.csv"')
    sc = load_text(tmp_path, text)
    assert sc.arrivals.process == "trace" and sc.capacity_varies and sc.allow_decline


# ------------------------------------------------------------------------- validation errors

ERRORS = [
    # [[clusters]]: kind and capacity
    ("kind", sub('kind = "edge"', 'kind = "fog"'), "'clusters[1].kind': unknown value 'fog'"),
    ("capacity-not-table", with_capacity('"tidal"'), "'clusters[1].capacity': must be dict"),
    ("curve-missing", with_capacity("{peak_load = 0.5}"), "'clusters[1].capacity.curve': is missing"),
    ("curve-unknown", with_capacity('{curve = "sine"}'), "'clusters[1].capacity.curve': unknown value 'sine'"),
    ("capacity-unknown-key", with_capacity('{curve = "tidal", peek_load = 0.5}'),
     "unknown key(s) ['peek_load'] at clusters[1].capacity"),
    ("capacity-other-curve-key", with_capacity('{curve = "tidal", file = "x.csv", peak_load = 0.5}'),
     "unknown key(s) ['file'] at clusters[1].capacity (curve = \"tidal\")"),
    ("constant-with-keys", with_capacity('{curve = "constant", peak_load = 0.5}'),
     "unknown key(s) ['peak_load'] at clusters[1].capacity (curve = \"constant\")"),
    ("period", sub("period_seconds = 86400", "period_seconds = 0"), "'clusters[1].capacity.period_seconds': must be > 0"),
    ("peak-load-high", sub("peak_load = 0.9", "peak_load = 1.5"), "'clusters[1].capacity.peak_load': must be <= 1"),
    ("peak-load-low", sub("peak_load = 0.9", "peak_load = -0.1"), "'clusters[1].capacity.peak_load': must be >= 0"),
    ("peak-load-missing", sub("peak_load = 0.9, ", ""), "'clusters[1].capacity.peak_load': is missing"),
    ("trough", sub("trough_ratio = 0.02", "trough_ratio = 2"), "'clusters[1].capacity.trough_ratio': must be <= 1"),
    ("trough-missing", sub("trough_ratio = 0.02, ", ""), "'clusters[1].capacity.trough_ratio': is missing"),
    ("peak-seconds", sub("peak_seconds = 50400", "peak_seconds = -1"), "'clusters[1].capacity.peak_seconds': must be >= 0"),
    ("peak-seconds-missing", sub("peak_seconds = 50400, ", ""), "'clusters[1].capacity.peak_seconds': is missing"),
    ("peak-seconds-inf", sub("peak_seconds = 50400", "peak_seconds = inf"),
     "'clusters[1].capacity.peak_seconds': must be a finite number"),
    ("start", sub("start_seconds = 0}", "start_seconds = -5}"), "'clusters[1].capacity.start_seconds': must be >= 0"),
    ("csv-file-missing-key", with_capacity('{curve = "csv"}'), "'clusters[1].capacity.file': is missing"),
    ("csv-file-absent", with_capacity('{curve = "csv", file = "nowhere.csv"}'),
     "key 'clusters[1].capacity.file': capacity schedule"),
    ("never-available", sub("trough_ratio = 0.02", "trough_ratio = 1.0", sub("peak_load = 0.9", "peak_load = 1.0"))
     .replace('kind = "cloud"\nnodes = [{cpu = 8, gpu = 8}]', 'kind = "cloud"\nnodes = [{cpu = 1, gpu = 8}]'),
     "'task_types[0].minimum': task type 'resnet' fits on no node"),
    # [[task_types]]: edge_speed, request, throughput
    ("edge-speed-zero", sub("edge_speed = 0.4", "edge_speed = 0"), "'task_types[0].edge_speed': must be > 0"),
    ("edge-speed-high", sub("edge_speed = 0.4", "edge_speed = 1.2"), "'task_types[0].edge_speed': must be <= 1"),
    ("edge-speed-type", sub("edge_speed = 0.4", 'edge_speed = "slow"'), "'task_types[0].edge_speed': must be int or float"),
    ("request-below", sub("request = {cpu = 2, gpu = 4}", "request = {cpu = 1, gpu = 4}"),
     "'task_types[0].request.cpu': 1 is below the task type's minimum.cpu = 2"),
    ("request-above-grid", sub("request = {cpu = 2, gpu = 4}", "request = {cpu = 2, gpu = 9}"),
     "'task_types[0].request.gpu': 9 exceeds grid_max.gpu = 8"),
    ("request-resource", sub("request = {cpu = 2, gpu = 4}", "request = {cpu = 2, tpu = 4}"),
     "'task_types[0].request': unknown resource(s) ['tpu']"),
    ("request-type", sub("request = {cpu = 2, gpu = 4}", "request = 4"), "'task_types[0].request': must be dict"),
    ("request-int", sub("request = {cpu = 2, gpu = 4}", "request = {gpu = 2.5}"),
     "'task_types[0].request.gpu': must be int"),
    ("request-fits-no-node", sub("request = {cpu = 2, gpu = 4}", "request = {cpu = 8, gpu = 2}")
     .replace("nodes = [{cpu = 8, gpu = 8}]", "nodes = [{cpu = 8, gpu = 1}, {cpu = 2, gpu = 8}]"),
     "'task_types[0].request': {'cpu': 8, 'gpu': 2} of task type 'resnet' fits on no node"),
    ("gpus-missing", with_progress('{model = "throughput", iterations_per_second = [1.0], iterations = 10}'),
     "'task_types[0].progress.gpus': is missing"),
    ("gpus-empty", with_progress('{model = "throughput", gpus = [], iterations_per_second = [], iterations = 10}'),
     "'task_types[0].progress.gpus': must be a non-empty list of integers"),
    ("gpus-float", with_progress('{model = "throughput", gpus = [1.0, 2.0], iterations_per_second = [1, 2], iterations = 10}'),
     "'task_types[0].progress.gpus': must be a non-empty list of integers"),
    ("gpus-first-zero", with_progress('{model = "throughput", gpus = [0, 2], iterations_per_second = [1, 2], iterations = 10}'),
     "'task_types[0].progress.gpus': [0, 2] must be strictly increasing from at least 1"),
    ("gpus-not-increasing", with_progress('{model = "throughput", gpus = [1, 4, 4], iterations_per_second = [1, 2, 3], iterations = 10}'),
     "'task_types[0].progress.gpus': [1, 4, 4] must be strictly increasing"),
    ("ips-length", with_progress('{model = "throughput", gpus = [1, 2], iterations_per_second = [1.0], iterations = 10}'),
     "'task_types[0].progress.iterations_per_second': has 1 values for 2 GPU counts"),
    ("ips-zero", with_progress('{model = "throughput", gpus = [1, 2], iterations_per_second = [1.0, 0.0], iterations = 10}'),
     "'task_types[0].progress.iterations_per_second[1]': must be a finite number > 0"),
    ("ips-inf", with_progress('{model = "throughput", gpus = [1, 2], iterations_per_second = [inf, 2.0], iterations = 10}'),
     "'task_types[0].progress.iterations_per_second[0]': must be a finite number > 0"),
    ("ips-string", with_progress('{model = "throughput", gpus = [1], iterations_per_second = ["fast"], iterations = 10}'),
     "'task_types[0].progress.iterations_per_second[0]': must be a finite number > 0"),
    ("iterations-zero", with_progress('{model = "throughput", gpus = [1], iterations_per_second = [1.0], iterations = 0}'),
     "'task_types[0].progress.iterations': must be > 0"),
    ("iterations-missing", with_progress('{model = "throughput", gpus = [1], iterations_per_second = [1.0]}'),
     "'task_types[0].progress.iterations': is missing"),
    ("throughput-foreign-key", with_progress('{model = "throughput", gpus = [1], iterations_per_second = [1.0], iterations = 5, base = 0.1}'),
     "unknown key(s) ['base'] at task_types[0].progress (model = \"throughput\")"),
    ("synthetic-foreign-key", with_progress('{model = "synthetic", base = 0.1, gpus = [1]}'),
     "unknown key(s) ['gpus'] at task_types[0].progress (model = \"synthetic\")"),
    ("throughput-min-gpu", sub("minimum = {cpu = 2, gpu = 1}", "minimum = {cpu = 2, gpu = 0}"),
     "'task_types[0].minimum.gpu': is 0, but a throughput model makes no progress on 0 GPUs"),
    # top level
    ("decline-type", sub("allow_decline = true", 'allow_decline = "yes"'), "'allow_decline': must be bool"),
    ("on-shrink", sub('on_shrink = "shrink"', 'on_shrink = "kill"'), "'on_shrink': unknown value 'kill'"),
    ("restart", sub("restart_seconds = 30", "restart_seconds = -1"), "'restart_seconds': must be >= 0"),
    ("restart-nan", sub("restart_seconds = 30", "restart_seconds = nan"), "'restart_seconds': must be a finite number"),
    ("migration", sub("migration_seconds = 120.5", "migration_seconds = -0.5"), "'migration_seconds': must be >= 0"),
    ("migration-inf", sub("migration_seconds = 120.5", "migration_seconds = inf"), "'migration_seconds': must be a finite number"),
    ("top-level-typo", sub("allow_decline = true", "allow_declines = true"), "unknown key(s) ['allow_declines'] at top level"),
    # [deadlines]
    ("deadlines-table", sub('[deadlines]\nrule = "elasticflow"\nslack = [0.5, 1.5]\nfraction = 0.8', "")
     .replace("visibility", 'deadlines = "elasticflow"\nvisibility'), "'deadlines': must be dict"),
    ("rule", sub('rule = "elasticflow"', 'rule = "edf"'), "'deadlines.rule': unknown value 'edf'"),
    ("deadlines-unknown-key", sub("fraction = 0.8", "fraction = 0.8\nslacks = [1, 2]"),
     "unknown key(s) ['slacks'] at deadlines"),
    ("slack-length", sub("slack = [0.5, 1.5]", "slack = [0.5]"), "'deadlines.slack': must be [low, high]"),
    ("slack-order", sub("slack = [0.5, 1.5]", "slack = [1.5, 0.5]"), "'deadlines.slack': must be [low, high]"),
    ("slack-zero", sub("slack = [0.5, 1.5]", "slack = [0, 1.5]"), "'deadlines.slack': must be [low, high]"),
    ("slack-inf", sub("slack = [0.5, 1.5]", "slack = [0.5, inf]"), "'deadlines.slack': must be [low, high]"),
    ("slack-type", sub("slack = [0.5, 1.5]", "slack = 1.0"), "'deadlines.slack': must be list"),
    ("fraction", sub("fraction = 0.8", "fraction = 1.1"), "'deadlines.fraction': must be <= 1"),
    ("fraction-low", sub("fraction = 0.8", "fraction = -0.1"), "'deadlines.fraction': must be >= 0"),
    ("rule-none-with-keys", sub('rule = "elasticflow"', 'rule = "none"'),
     "'deadlines.fraction': is set but rule = \"none\" draws no deadlines"),
]


@pytest.mark.parametrize("text, expected", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_each_new_validation_error_names_its_key(tmp_path, text, expected):
    message = error_of(tmp_path, text)
    assert expected in message, message
    assert str(tmp_path / "s.toml") in message and "Fix: " in message


def test_the_first_mistake_in_the_fixed_order_is_reported(tmp_path):
    # clusters come before task types, task types before the top-level tier keys, those before [deadlines]
    text = sub('kind = "edge"', 'kind = "fog"', sub("edge_speed = 0.4", "edge_speed = 2"))
    assert "'clusters[1].kind'" in error_of(tmp_path, text)
    text = sub("edge_speed = 0.4", "edge_speed = 2", sub("restart_seconds = 30", "restart_seconds = -1"))
    assert "'task_types[0].edge_speed'" in error_of(tmp_path, text)
    text = sub("restart_seconds = 30", "restart_seconds = -1", sub("fraction = 0.8", "fraction = 3"))
    assert "'restart_seconds'" in error_of(tmp_path, text)
    text = sub("fraction = 0.8", "fraction = 3", sub('kind = "cloud"\nnodes = [{cpu = 8, gpu = 8}]',
                                                    'kind = "cloud"\nnodes = [{cpu = 8, gpu = 2}]'))
    assert "'deadlines.fraction'" in error_of(tmp_path, text)  # before the cross-table request check


# ----------------------------------------------------------------------------- capacity CSV

CSV_TEXT = "time_seconds,available\n0,1\n3600,0.4\n# the evening\n\n7200,0.75\n"


def csv_scenario(tmp_path, csv_text: str | bytes, start: float = 0.0, resolve_files: bool = True):
    path = tmp_path / "capacity.csv"
    if isinstance(csv_text, bytes):
        path.write_bytes(csv_text)
    else:
        path.write_text(csv_text, encoding="utf-8")
    text = with_capacity(f'{{curve = "csv", file = "capacity.csv", start_seconds = {start}}}')
    return load_text(tmp_path, text, resolve_files=resolve_files)


def csv_error(tmp_path, csv_text) -> str:
    with pytest.raises(ScenarioError) as info:
        csv_scenario(tmp_path, csv_text)
    message = str(info.value)
    assert "key 'clusters[1].capacity.file'" in message and str(tmp_path / "capacity.csv") in message
    assert "Fix: " in message
    return message


def test_a_good_capacity_csv_is_read_on_load(tmp_path):
    cs = csv_scenario(tmp_path, CSV_TEXT, start=60).clusters[1].capacity_schedule
    assert (cs.curve, cs.times, cs.shares, cs.start_seconds) == ("csv", (0.0, 3600.0, 7200.0), (1.0, 0.4, 0.75), 60.0)
    assert cs.file == str(tmp_path / "capacity.csv")  # resolved against the scenario file's folder
    assert cs.varies


def test_a_byte_order_mark_is_ignored(tmp_path):
    cs = csv_scenario(tmp_path, b"\xef\xbb\xbf" + CSV_TEXT.encode()).clusters[1].capacity_schedule
    assert cs.times == (0.0, 3600.0, 7200.0)


def test_without_resolve_files_the_csv_is_not_read(tmp_path):
    text = with_capacity('{curve = "csv", file = "absent.csv"}')
    cs = load_text(tmp_path, text, resolve_files=False).clusters[1].capacity_schedule
    assert (cs.curve, cs.file, cs.times, cs.shares) == ("csv", "absent.csv", (), ())


@pytest.mark.parametrize("csv_text, expected", [
    ("time,available\n0,1\n", "line 1: header ['time', 'available'] is not ['time_seconds', 'available']"),
    ("time_seconds,available\n0,1\n10,0.5\n10,0.6\n", "line 4, column 'time_seconds': 10 does not come after"),
    ("time_seconds,available\n0,1\n20,0.5\n10,0.6\n", "line 4, column 'time_seconds': 10 does not come after"),
    ("time_seconds,available\n0,1\n10,1.5\n", "line 3, column 'available': 1.5 is not a share in [0, 1]"),
    ("time_seconds,available\n0,-0.1\n", "line 2, column 'available': -0.1 is not a share in [0, 1]"),
    ("time_seconds,available\n60,1\n", "line 2, column 'time_seconds': the first row's time is 60, not 0"),
    ("time_seconds,available\n0,full\n", "line 2, column 'available': 'full' is not a number"),
    ("time_seconds,available\n0,nan\n", "line 2, column 'available': 'nan' is not a finite number"),
    ("time_seconds,available\n0,1,2\n", "line 2: 3 cells, but a row has 2"),
    ("time_seconds,available\n", "no rows"),
    ("", "no header. Fix: start the file with the line `time_seconds,available`"),
], ids=["header", "repeated-time", "decreasing-time", "share-above-1", "share-below-0", "first-time",
        "not-a-number", "nan", "cells", "no-rows", "empty"])
def test_a_bad_capacity_csv_names_file_line_and_column(tmp_path, csv_text, expected):
    message = csv_error(tmp_path, csv_text)
    assert expected in message, message


def test_a_capacity_csv_that_is_not_utf8_or_a_directory_is_named(tmp_path):
    assert "not UTF-8" in csv_error(tmp_path, b"time_seconds,available\n0,\xff\n")
    (tmp_path / "folder").mkdir()
    text = with_capacity('{curve = "csv", file = "folder"}')
    assert "is a directory" in error_of(tmp_path, text)


def test_the_fingerprint_covers_the_csv_content_not_its_path(tmp_path):
    loaded = []
    for folder, text in (("a", CSV_TEXT), ("b", CSV_TEXT), ("c", CSV_TEXT.replace("0.4", "0.5"))):
        (tmp_path / folder).mkdir()
        loaded.append(scenario_fingerprint(csv_scenario(tmp_path / folder, text)))
    assert loaded[0] == loaded[1] != loaded[2]


# ------------------------------------------------------------------------- built-in cloud-edge


def test_cloud_edge_loads_both_ways_and_round_trips(tmp_path, capsys):
    sc = load_scenario("cloud-edge")
    assert load_scenario("cloud-edge", resolve_files=False) == sc  # nothing to resolve: self-contained
    assert main(["scenarios", "--show", "cloud-edge"]) == 0
    assert load_text(tmp_path, capsys.readouterr().out) == sc


def test_cloud_edge_fingerprint_depends_on_its_tier_settings(tmp_path):
    sc = load_scenario("cloud-edge")
    base = scenario_fingerprint(sc)
    text = builtin_text("cloud-edge")
    assert scenario_fingerprint(load_text(tmp_path, text)) == base
    assert scenario_fingerprint(load_text(tmp_path, sub("edge_speed = 0.7", "edge_speed = 0.65", text))) != base
    types = list(sc.task_types)
    types[0] = dataclasses.replace(types[0], edge_speed=0.9)
    assert scenario_fingerprint(dataclasses.replace(sc, task_types=tuple(types))) != base
    assert scenario_fingerprint(load_text(tmp_path, sub("peak_seconds = 43200.0", "peak_seconds = 39600.0", text))) != base


ELASTICFLOW_A100 = {  # the table: iterations/s at 1 / 2 / 4 / 8 / 16 GPUs
    "resnet50": (6.84, 11.84, 18.30, 21.27, 21.51), "vgg16": (5.05, 9.04, 14.76, 19.33, 25.89),
    "inception3": (4.82, 8.19, 11.69, 13.39, 13.69), "bert": (6.03, 8.64, 10.36, 11.06, 10.99),
    "gpt2": (7.31, 11.95, 16.67, 18.70, 19.87), "deepspeech2": (3.02, 5.37, 7.54, 9.82, 12.88),
}


def test_cloud_edge_is_the_documented_system():
    sc = load_scenario("cloud-edge")
    cloud = [c for c in sc.clusters if c.kind == "cloud"]
    edges = [c for c in sc.clusters if c.kind == "edge"]
    assert len(cloud) == 1 and cloud[0].capacity() == (128, 16) and not cloud[0].capacity_schedule.varies
    assert len(edges) == 3 and all(c.nodes == ((8, 1),) * 4 for c in edges)
    peaks = sorted(c.capacity_schedule.peak_seconds for c in edges)
    assert peaks == [43200.0, 50400.0, 57600.0]
    for c in edges:
        cs = c.capacity_schedule
        assert (cs.curve, cs.period_seconds, cs.peak_load, cs.trough_ratio, cs.start_seconds) == ("tidal", 86400.0, 0.9, 0.02, 0.0)
    assert {t.name: t.progress.iterations_per_second for t in sc.task_types} == ELASTICFLOW_A100
    assert all(t.progress.gpus == (1, 2, 4, 8, 16) and t.minimum == (2, 1) for t in sc.task_types)
    assert all(0.5 <= t.edge_speed <= 0.85 for t in sc.task_types)
    assert sc.deadlines == Deadlines("elasticflow", 0.5, 1.5, 0.8)
    assert (sc.allow_decline, sc.on_shrink, sc.restart_seconds, sc.migration_seconds) == (True, "preempt", 30.0, 300.0)
    assert (sc.slot_seconds, sc.visibility, sc.grid_max, sc.allow_preemption) == (300.0, "all", (16, 8), True)


def test_cloud_edge_durations_day_and_load_are_as_documented():
    sc = load_scenario("cloud-edge")
    gpu = sc.resource_index("gpu")
    busy = 0.0
    for t in sc.task_types:
        p = t.progress
        g = t.requested()[gpu]
        seconds = p.iterations / float(np.interp(g, p.gpus, p.iterations_per_second))
        assert 1800 * 0.99 <= seconds <= 3 * 3600, (t.name, seconds)  # 30 min to 3 h at the request
        busy += sc.arrivals.rate / len(sc.task_types) * seconds / sc.slot_seconds * g
    load = busy / 16
    assert 1.2 <= load <= 1.5 and math.isclose(busy, 20.1, abs_tol=0.05), load
    day = sc.arrivals.tasks / sc.arrivals.rate * sc.slot_seconds / 86400
    assert 0.95 <= day <= 1.05, day
    assert sc.max_slots * sc.arrivals.rate >= 2 * sc.arrivals.tasks + 30
