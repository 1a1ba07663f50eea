"""Geo scenario files (issue 16): every bad file is refused with an error that names the file, the
key and the fix (tapfinger/sim/geo/scenario.py)."""

from __future__ import annotations

import pytest

from tapfinger.sim.geo.scenario import is_geo_scenario, load_geo_scenario
from tapfinger.sim.scenario import ScenarioError

# ----------------------------------------------------------------------------- scenario files
BASE_TOML = """\
name = "two"
family = "geo"
resources = ["gpu", "cpu"]
max_slots = 50
[sites]
capacity = [[2, 8], [1, 4]]
cost = [[0, 2], [2, 0]]
link_mb = [[0, 200], [200, 0]]
[jobs]
count = 3
arrival_slots = 5
data_sites = [1, 2]
blocks_per_site = [1, 3]
block_mb = [50.0, 100.0]
worker_low = [0, 1]
worker_high = [1, 3]
ps_low = [0, 1]
ps_high = [0, 2]
"""
SITES = "[sites]\ncapacity = [[2, 8], [1, 4]]\ncost = [[0, 2], [2, 0]]\nlink_mb = [[0, 200], [200, 0]]\n"
GENERATED_SITES = ("[sites]\ncount = 2\nseed = 0\ncapacity_low = [2, 8]\ncapacity_high = [2, 8]\n"
                   "link_mb_per_slot = [20.0, 30.0]\n")
JOBS = "arrival_slots = 5"  # where a row adds [jobs] keys


def write(tmp_path, text: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


def test_a_valid_file_loads_and_is_a_geo_scenario(tmp_path):
    path = write(tmp_path, BASE_TOML)
    sc = load_geo_scenario(path)
    assert is_geo_scenario(path) and sc.num_sites == 2 and sc.sites.link_mb[0][1] == 200.0


@pytest.mark.parametrize("old, new, key, fix", [
    ('family = "geo"\n', "", "key 'family'", 'add `family = "geo"`'),
    ("cost = [[0, 2], [2, 0]]", "cost = [[0, 2], [3, 0]]", "key 'sites.cost'", "cost[r][s] = cost[s][r]"),
    ("worker_high = [1, 3]", "worker_high = [1, 30]", "key 'jobs.worker_high'", "raise the site capacities"),
    (SITES, GENERATED_SITES, "key 'sites.link_mb_per_slot'", "at least one block"),
    ("[[0, 200], [200, 0]]", "[[0, 20], [20, 0]]", "key 'sites.link_mb':", "at least one block"),
    (SITES, GENERATED_SITES.replace("high = [2, 8]", "high = [2, 7]"), "capacity_high': is below capacity_low for cpu",
     "set the cpu entry >= 8"),
    (SITES, GENERATED_SITES.replace("low = [2, 8]", "low = [1.5, 8]"), "key 'sites.capacity_low'", "whole number"),
    ("[[2, 8], [1, 4]]", "[[2, 8], [1]]", "key 'sites.capacity'", "one row of 2 integers"),
    ("cost = [[0, 2], [2, 0]]", 'cost = [[0, "a"], [2, 0]]', "key 'sites.cost'", "2 rows of 2 numbers"),
    ("[[0, 200], [200, 0]]", "[[0, 200], [200]]", "key 'sites.link_mb'", "2 rows of 2 numbers"),
    ("worker_low = [0, 1]", "worker_low = [0.5, 1]", "key 'jobs.worker_low'", "whole number"),
    ("worker_high = [1, 3]", "worker_high = [1, 0]", "worker_high': is below worker_low for cpu", "cpu entry >= 1"),
    ("ps_high = [0, 2]", "ps_high = [0, 0]", "ps_high': is below ps_low for cpu", "cpu entry >= 1"),
    (JOBS, JOBS + '\nlatency = "linear"\nlatency_weight = [1.0, 2.0]', "latency_weight': is a parameter of latency "
     '= "sigmoid", not of the chosen latency = "linear"', 'remove it, or set latency = "sigmoid"'),
    (JOBS, JOBS + '\nlatency = "linear"\nlatency_tau = [-1.0, 2.0]', "key 'jobs.latency_tau'", "low end >= 0"),
    (JOBS, JOBS + '\nlatency = "linear"\nlatency_b = [-1.0, 0.0]', "key 'jobs.latency_b'", "low end >= 0"),
    (JOBS, JOBS + "\nlatency_weight = [-5.0, 2.0]", "key 'jobs.latency_weight'", "low end >= 0"),
    (JOBS, JOBS + "\nlatency_scale = [0.0, 0.0]", "key 'jobs.latency_scale'", "low end > 0"),
    (JOBS, JOBS + "\nlatency_midpoint = [0.0, inf]", "key 'jobs.latency_midpoint'", "ordinary numbers"),
    (JOBS, JOBS + '\nlatency = "piecewise"\nlatency_tau1 = [-1.0, 0.0]', "key 'jobs.latency_tau1'", "low end >= 0"),
    (JOBS, JOBS + '\nlatency = "piecewise"\nlatency_tau1 = [0.0, 200.0]', "key 'jobs.latency_tau1'",
     "high end of latency_tau1 <= the low end of latency_tau2"),
    (JOBS, JOBS + '\nlatency = "piecewise"\nlatency_deadline = [1.0, inf]', "key 'jobs.latency_deadline'", "ordinary"),
    ('name = "two"', 'name = "two"\ncolour = "red"', "['colour'] at top level", "remove them or correct"),
    ("count = 3", "count = 3\nblock_size = 5", "['block_size'] at jobs", "remove them or correct the spelling"),
])
def test_a_bad_geo_file_names_the_file_the_key_and_a_fix(tmp_path, old, new, key, fix):
    assert old in BASE_TOML
    path = write(tmp_path, BASE_TOML.replace(old, new))
    with pytest.raises(ScenarioError) as err:
        load_geo_scenario(path)
    text = str(err.value)
    assert str(path) in text and key in text and "Fix:" in text and fix in text, text

