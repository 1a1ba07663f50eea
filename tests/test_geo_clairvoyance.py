"""No geo scheduler, observation or graph may depend on jobs that have not arrived (issue 16).

The later jobs differ in number, in arrival slots and in content, so that a policy reading the job
count, the last arrival or any array over all jobs would be caught, not only one reading a job's
properties."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agents.geo.registry import geo_policy_names, make_geo_policy
from envs.geo_graph import graph_arrays
from envs.geo_observations import build_observation
from tapfinger.sim.geo.engine import GeoEngine
from tapfinger.sim.geo.scenario import draw_jobs, load_geo_scenario

GEO6 = load_geo_scenario("geo-6")


def _futures(seed: int, split: int):
    """Two job tuples equal before slot `split`, then different in count, arrival slots and content."""
    jobs = draw_jobs(GEO6, seed)
    past = tuple(j for j in jobs if j.arrival < split)
    late_a = tuple(j for j in jobs if j.arrival >= split)
    other = draw_jobs(GEO6, seed + 7)
    late_b = tuple(sorted((replace(j, arrival=split + (3 * k) % 7) for k, j in enumerate(other[:len(late_a) + 3])),
                          key=lambda j: j.arrival))
    return past + late_a, past + late_b


def _play_until(name: str, jobs, seed: int, split: int) -> tuple[list, list]:
    engine, policy = GeoEngine(GEO6), make_geo_policy(name)
    engine.reset(seed, jobs)
    policy.reset(GEO6, seed)
    decisions, views = [], []
    while not engine.done and engine.slot < split:
        obs = build_observation(engine)
        views.append({k: v.tolist() for k, v in {**obs, **graph_arrays(obs, GEO6)}.items()})
        d = policy.decide(engine)
        decisions.append(({i: (int(ps), np.asarray(w).tolist()) for i, (ps, w) in d.placements.items()},
                          [tuple(int(v) for v in m) for m in d.moves]))
        engine.step(d)
    return decisions, views


@pytest.mark.parametrize("name", geo_policy_names())
def test_nothing_before_a_later_arrival_depends_on_it(name):
    split = 9
    jobs_a, jobs_b = _futures(3, split)
    assert len(jobs_a) != len(jobs_b) and jobs_a[-1].arrival != jobs_b[-1].arrival
    dec_a, view_a = _play_until(name, jobs_a, 3, split)
    dec_b, view_b = _play_until(name, jobs_b, 3, split)
    assert len(dec_a) == split and any(placed for placed, _ in dec_a)
    assert dec_a == dec_b
    assert view_a == view_b  # the observation and the graph a learned policy reads
