"""The observation of the geo scheduler (issue 16): fixed-size numpy arrays plus the action masks.

The scheduler sees the window of the oldest `scenario.window` pending jobs (arrived, unfinished,
in arrival order; `GeoEngine.pending()`), never a job that has not arrived. Values are raw
(slots, passes, blocks, units of each resource, MB, cost units); models normalise them
(`envs.geo_graph` does). W = window, R = sites, K = resources:

| key | shape | meaning |
|---|---|---|
| slot | (1,) | the slot the next decision is for |
| pending | (1,) | pending jobs in all (the window shows the oldest W of them) |
| job_id | (W,) | job index (arrival order), -1 = empty row |
| job_wait | (W,) | slots since arrival (0 in the arrival slot) |
| job_passes_left | (W, R) | block-passes still to train of the blocks at each site |
| job_passes_total | (W,) | blocks x epochs: every pass the job needs |
| job_worker | (W, K) | one worker's demand per resource |
| job_ps | (W, K) | the parameter server's demand per resource |
| job_exchange_mb | (W,) | MB each worker exchanges with the PS per slot |
| job_block_mb | (W,) | MB per block |
| job_epochs | (W,) | passes each block needs |
| job_rate | (W,) | block-passes one worker trains per slot |
| job_latency_increment | (W,) | f(wait + 2) - f(wait + 1): what finishing one slot later than this slot costs (the JCT of a job that finishes in this slot is wait + 1) |
| job_ps_site | (W,) | the PS site of the current placement (the last slot's), -1 = none |
| job_workers | (W, R) | workers per site of the current placement |
| site_capacity | (R, K) | capacity per resource |
| site_free | (R, K) | what the current placement of all jobs leaves free |
| cost | (R, R) | bandwidth cost per 100 MB (symmetric, zero diagonal) |
| link_mb | (R, R) | MB a directed link carries per slot, 0 = unlimited |
| ps_mask | (W, R+1) | 1 = allowed: option 0 = do not run (always allowed), r+1 = PS at site r (the PS alone fits there) |
| max_workers | (W, R) | the most workers of the job that fit at the site alone (no PS there, nothing else), at most `max_workers_per_site`; 0 for empty rows |
| movable | (W, R) | untouched blocks at each site: the most blocks that may leave it this slot (all destinations together) |

Every decision is a complete placement for its slot (jobs not placed do not run), so a decision
may use each site's whole capacity: `site_free` says what keeping the current placement would
leave. The masks are per job alone; a decision must also keep the jobs together within each
site's capacity and the moves within the link capacities (the engine's rules, which the masks
cannot factorise).
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from tapfinger.sim.geo.engine import NO_SITE, GeoEngine
from tapfinger.sim.geo.model import GeoScenario

BIG = 2**31 - 1


def max_job_blocks(scenario: GeoScenario) -> int:
    """The most blocks a job of the scenario may have (the bound of a move in the action space)."""
    jr = scenario.jobs
    return jr.data_sites[1] * jr.blocks_per_site[1]


def observation_space(scenario: GeoScenario) -> spaces.Dict:
    W, R, K = scenario.window, scenario.num_sites, scenario.num_resources
    cap = int(np.asarray(scenario.sites.capacity).max())
    mw = scenario.max_workers_per_site

    def ints(low, high, shape):
        return spaces.Box(low=low, high=high, shape=shape, dtype=np.int64)

    def floats(low, high, shape):
        return spaces.Box(low=low, high=high, shape=shape, dtype=np.float32)

    return spaces.Dict({
        "slot": ints(0, BIG, (1,)),
        "pending": ints(0, BIG, (1,)),
        "job_id": ints(-1, BIG, (W,)),
        "job_wait": ints(0, BIG, (W,)),
        "job_passes_left": ints(0, BIG, (W, R)),
        "job_passes_total": ints(0, BIG, (W,)),
        "job_worker": ints(0, BIG, (W, K)),
        "job_ps": ints(0, BIG, (W, K)),
        "job_exchange_mb": floats(0.0, np.inf, (W,)),
        "job_block_mb": floats(0.0, np.inf, (W,)),
        "job_epochs": ints(0, BIG, (W,)),
        "job_rate": ints(0, BIG, (W,)),
        "job_latency_increment": floats(-np.inf, np.inf, (W,)),
        "job_ps_site": ints(-1, R - 1, (W,)),
        "job_workers": ints(0, mw, (W, R)),
        "site_capacity": ints(0, cap, (R, K)),
        "site_free": ints(0, cap, (R, K)),
        "cost": floats(0.0, np.inf, (R, R)),
        "link_mb": floats(0.0, np.inf, (R, R)),
        "ps_mask": ints(0, 1, (W, R + 1)),
        "max_workers": ints(0, mw, (W, R)),
        "movable": ints(0, BIG, (W, R)),
    })


def window_jobs(engine: GeoEngine) -> np.ndarray:
    """[W] job index of each window row (the oldest pending jobs first), -1 = empty row."""
    W = engine.scenario.window
    ids = np.full(W, -1, dtype=np.int64)
    pending = engine.pending()[:W]
    ids[:len(pending)] = pending
    return ids


def job_masks(engine: GeoEngine, jobs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ps_mask [W, R+1], max_workers [W, R], movable [W, R]) of the window rows `jobs` (-1 = empty)."""
    live = jobs >= 0
    j = np.where(live, jobs, 0)
    cap = engine.capacity  # [R, K]
    mw = engine.scenario.max_workers_per_site
    ps_fits = (engine.ps_need[j][:, None, :] <= cap[None]).all(axis=2) & live[:, None]  # [W, R]
    ps_mask = np.concatenate([np.ones((len(jobs), 1), dtype=np.int64), ps_fits.astype(np.int64)], axis=1)
    need = engine.worker_need[j][:, None, :]  # [W, 1, K]
    # per resource the workers that fit; a resource the worker does not need bounds nothing
    per_resource = np.where(need > 0, cap[None] // np.maximum(need, 1), mw)
    max_workers = np.where(live[:, None], np.minimum(per_resource.min(axis=2), mw), 0)
    movable = np.where(live[:, None], engine.passes_left[j] // engine.epochs[j][:, None], 0)
    return ps_mask, max_workers.astype(np.int64), movable.astype(np.int64)


def _latency_increments(engine: GeoEngine, jobs: np.ndarray, wait: np.ndarray) -> np.ndarray:
    out = np.zeros(len(jobs), dtype=np.float32)
    for row in np.flatnonzero(jobs >= 0):
        out[row] = engine.jobs[jobs[row]].latency.increment(int(wait[row]) + 1)
    return out


def build_observation(engine: GeoEngine, jobs: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The scheduler's observation now (see the module docstring for the keys). `jobs`: the window
    rows (`window_jobs(engine)`, computed when not given)."""
    e = engine
    jobs = window_jobs(e) if jobs is None else jobs
    live = jobs >= 0
    j = np.where(live, jobs, 0)
    col = live[:, None]

    def rows(values: np.ndarray, fill=0) -> np.ndarray:
        v = values[j]
        return np.where(col if v.ndim > 1 else live, v, fill)

    wait = np.where(live, e.slot - e.arrival[j], 0)
    ps_mask, max_workers, movable = job_masks(e, jobs)
    placed = {int(i): (int(e.ps_site[i]), e.workers[i]) for i in np.flatnonzero(e.ps_site != NO_SITE)}
    return {
        "slot": np.array([e.slot], dtype=np.int64),
        "pending": np.array([len(e.pending())], dtype=np.int64),
        "job_id": jobs.astype(np.int64),
        "job_wait": wait.astype(np.int64),
        "job_passes_left": rows(e.passes_left),
        "job_passes_total": np.where(live, e.blocks0[j].sum(axis=1) * e.epochs[j], 0),
        "job_worker": rows(e.worker_need),
        "job_ps": rows(e.ps_need),
        "job_exchange_mb": rows(e.exchange_mb, 0.0).astype(np.float32),
        "job_block_mb": rows(e.block_mb, 0.0).astype(np.float32),
        "job_epochs": rows(e.epochs),
        "job_rate": rows(e.rate),
        "job_latency_increment": _latency_increments(e, jobs, wait),
        "job_ps_site": rows(e.ps_site, NO_SITE),
        "job_workers": rows(e.workers),
        "site_capacity": e.capacity.copy(),
        "site_free": e.capacity - e.usage(placed),
        "cost": e.cost.astype(np.float32),
        "link_mb": e.link_mb.astype(np.float32),
        "ps_mask": ps_mask,
        "max_workers": max_workers,
        "movable": movable,
    }
