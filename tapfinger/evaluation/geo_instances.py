"""Small random geo instances for the exact optimum (`geo_optimal`) and the competitive ratio.

`small_geo_scenario(seed)` is geo-6 shrunk until HiGHS proves the optimum in seconds (median
about 0.5 s, the slowest of seeds 0..49 about 28 s, on one core):

* 3 sites (geo-6: 6), drawn from the instance seed itself, so every instance has its own
  capacities, bandwidth costs and link capacities. Capacities are geo-6's, lowered: 2-4 GPU,
  12-20 vCPU, 32-64 GB memory, 20-60 GB disk. The low end is one largest worker plus one
  largest PS, so every site can run any job (no instance is refused by validation), and the
  high end is two to three workers: the jobs compete for sites.
* bandwidth cost 2-8 per 100 MB (the patent's range); links carry 200-500 MB per slot
  (geo-6: 400-1000), one to ten blocks, so links bind now and then.
* 3 jobs (geo-6: 12) arriving in slots 0-3, data on 1-2 sites, 1-4 blocks per site (geo-6: 2-6)
  of 50-200 MB, 1-3 epochs, 1-3 block-passes per worker and slot (geo-6: 2-5), exchange 30-375
  MB per worker and slot, the patent's worker and PS demands capped to the sites (worker 0-2
  GPU, 1-6 vCPU, 2-16 GB, 5-10 GB disk; PS the same without GPU).
* at most 2 workers per job and site (geo-6: 3); latency sigmoid with weight 100-1000,
  midpoint 3-8 slots, scale 1-3 (geo-6's midpoints 5-15, shifted to the shorter jobs).
* horizon (max_slots) 16: a job has 1-12 passes per site, up to 24 in all, so it can finish
  within a few slots, and the horizon leaves room to wait for capacity. Jobs unfinished at the
  horizon pay f(16 - arrival), in the optimum as in every policy's episode (the optimum leaves 2
  of the 150 jobs of seeds 0..49 unfinished: their sigmoid has saturated, see docs/geo-optimum.md).

The jobs of an instance are `draw_jobs(scenario, seed)`, what `run_geo_episode(scenario, policy,
seed)` plays: every policy and the optimum see the same jobs.
"""

from __future__ import annotations

from tapfinger.sim.geo.model import GeoJob, GeoScenario
from tapfinger.sim.geo.scenario import draw_jobs, parse_geo_scenario

SMALL_SITES = 3
SMALL_JOBS = 3
SMALL_SLOTS = 16
SMALL_ARRIVAL_SLOTS = 4  # jobs arrive in slots 0..3


def small_geo_table(seed: int, sites: int = SMALL_SITES, jobs: int = SMALL_JOBS,
                    max_slots: int = SMALL_SLOTS) -> dict:
    """The TOML table of a small instance (what `small_geo_scenario` parses)."""
    return {
        "name": f"geo-small-{sites}x{jobs}-{seed}", "family": "geo",
        "description": "small random geo instance for the exact optimum (tapfinger.evaluation.geo_instances)",
        "resources": ["gpu", "cpu", "mem", "disk"], "max_slots": max_slots, "max_workers_per_site": 2,
        "window": jobs,
        "sites": {"count": sites, "seed": seed, "capacity_low": [2, 12, 32, 20], "capacity_high": [4, 20, 64, 60],
                  "cost_per_100mb": [2.0, 8.0], "link_mb_per_slot": [200.0, 500.0]},
        "jobs": {"count": jobs, "arrival_slots": SMALL_ARRIVAL_SLOTS, "data_sites": [1, min(2, sites)],
                 "blocks_per_site": [1, 4], "block_mb": [50.0, 200.0], "epochs": [1, 3], "blocks_per_slot": [1, 3],
                 "exchange_mb": [30.0, 375.0], "worker_low": [0, 1, 2, 5], "worker_high": [2, 6, 16, 10],
                 "ps_low": [0, 1, 2, 5], "ps_high": [0, 6, 16, 10], "latency": "sigmoid",
                 "latency_weight": [100.0, 1000.0], "latency_midpoint": [3.0, 8.0], "latency_scale": [1.0, 3.0]},
    }


def small_geo_scenario(seed: int, sites: int = SMALL_SITES, jobs: int = SMALL_JOBS,
                       max_slots: int = SMALL_SLOTS) -> GeoScenario:
    """A small random instance (see the module docstring); same seed, same sites."""
    if max_slots < SMALL_ARRIVAL_SLOTS:  # the last arrival slot must still be inside the horizon
        raise ValueError(f"small_geo_scenario: max_slots {max_slots} is below the {SMALL_ARRIVAL_SLOTS} arrival "
                         f"slots (jobs arrive in slots 0..{SMALL_ARRIVAL_SLOTS - 1}). "
                         f"Fix: max_slots >= {SMALL_ARRIVAL_SLOTS}")
    return parse_geo_scenario(small_geo_table(seed, sites, jobs, max_slots), f"<small geo instance {seed}>")


def small_geo_instance(seed: int, sites: int = SMALL_SITES, jobs: int = SMALL_JOBS,
                       max_slots: int = SMALL_SLOTS) -> tuple[GeoScenario, tuple[GeoJob, ...]]:
    """The scenario of `seed` and the jobs its episode `seed` plays."""
    sc = small_geo_scenario(seed, sites, jobs, max_slots)
    return sc, draw_jobs(sc, seed)
