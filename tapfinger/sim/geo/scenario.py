"""Geo scenarios: the TOML format (`family = "geo"`), the built-ins and the seeded job generator.

A geo scenario fixes its sites, capacities, bandwidth costs and link capacities: drawn once from
`[sites] seed` (or written out in full), so every episode runs on the same system. Its jobs are
drawn per episode seed from the `[jobs]` ranges (`draw_jobs`), so every policy of a seed sees the
same jobs (common random numbers). `docs/geo-distributed.md` documents every key.
"""

from __future__ import annotations

import math
import tomllib
from importlib import resources
from pathlib import Path

import numpy as np

from tapfinger.sim.geo.model import (GEO_RESOURCES, LATENCY_KINDS, GeoJob, GeoScenario, GeoSites, JobRanges,
                                     LatencyCost)
from tapfinger.sim.scenario import ScenarioError, _geo_builtin_names, _read_toml_text
from tapfinger.sim.scenario_toml import _Reader

TOP_KEYS = {"name", "description", "family", "resources", "max_slots", "max_workers_per_site", "window",
            "sites", "jobs"}
SITE_KEYS = {"count", "seed", "capacity_low", "capacity_high", "cost_per_100mb", "link_mb_per_slot",
             "capacity", "cost", "link_mb"}
JOB_KEYS = {"count", "arrival_slots", "data_sites", "blocks_per_site", "block_mb", "epochs", "blocks_per_slot",
            "exchange_mb", "worker_low", "worker_high", "ps_low", "ps_high", "latency"}
# The latency parameters each kind draws, with the generator's defaults (low, high).
LATENCY_PARAMS = {"sigmoid": {"weight": (100.0, 1000.0), "midpoint": (10.0, 30.0), "scale": (2.0, 5.0)},
                  "linear": {"tau": (1.0, 10.0), "b": (0.0, 0.0)},
                  "piecewise": {"tau1": (0.0, 0.0), "tau2": (100.0, 1000.0), "deadline": (10.0, 30.0)}}
# What keeps f(t) >= 0 and non-decreasing for t >= 0: scale divides (> 0); the rest >= 0 (tau1 <=
# tau2 is checked on its own). midpoint and deadline only need to be finite.
LATENCY_POSITIVE = {"scale"}
LATENCY_NON_NEGATIVE = {"weight", "tau", "b", "tau1", "tau2"}
MAX_GEO_SITES = 500
MAX_GEO_JOBS = 100_000
# A job's stream of the episode seed: the jobs of seed s are the same whatever the policy does.
JOB_STREAM = 0x6E0


def geo_builtin_names() -> list[str]:
    return _geo_builtin_names()


def geo_builtin_text(name: str) -> str:
    return resources.files("tapfinger").joinpath("scenarios", "geo", f"{name}.toml").read_text(encoding="utf-8")


def is_geo_scenario(name_or_path: str | Path) -> bool:
    """Whether the name is a geo built-in, or the path a TOML file with `family = "geo"`."""
    spec = str(name_or_path)
    if spec in geo_builtin_names():
        return True
    path = Path(spec)
    if not path.is_file():
        return False
    try:
        return tomllib.loads(_read_toml_text(path)).get("family") == "geo"
    except (tomllib.TOMLDecodeError, ValueError):
        return False  # the ordinary loader reports the file's problem


def load_geo_scenario(name_or_path: str | Path) -> GeoScenario:
    return parse_geo_scenario(*geo_scenario_data(name_or_path))


def geo_scenario_data(name_or_path: str | Path) -> tuple[dict, str]:
    """The parsed TOML of a geo built-in or file, and its source for messages (not yet validated:
    studies edit it, e.g. a site count, before `parse_geo_scenario`)."""
    spec = str(name_or_path)
    if spec in geo_builtin_names():
        text, source = geo_builtin_text(spec), f"<built-in {spec}>"
    else:
        path = Path(spec)
        if not path.is_file():
            raise ScenarioError(f"geo scenario {spec!r} not found: give one of {', '.join(geo_builtin_names())} "
                                f"or the path of a TOML file with family = \"geo\"")
        text, source = _read_toml_text(path), str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {source}: not valid TOML ({exc}). Fix: correct the syntax") from None
    return data, source


def parse_geo_scenario(data: dict, source: str) -> GeoScenario:
    rd = _Reader(source)
    rd.unknown_keys(data, "", TOP_KEYS)
    if data.get("family") != "geo":
        raise rd.fail("family", f"must be \"geo\" for a geo scenario, got {data.get('family')!r}",
                      'add `family = "geo"`')
    res = tuple(rd.get(data, "resources", "", list, list(GEO_RESOURCES)))
    if not res or not all(isinstance(r, str) for r in res) or len(set(res)) != len(res):
        raise rd.fail("resources", f"must be a list of distinct names, got {list(res)!r}", 'write e.g. ["gpu", "cpu"]')
    sites = _sites(rd, rd.get(data, "sites", "", dict), res)
    jobs = _jobs(rd, rd.get(data, "jobs", "", dict), res, sites, "link_mb" in data["sites"])
    max_slots = rd.integer(data, "max_slots", "", 1000, low=1, high=10_000_000)
    if max_slots < jobs.arrival_slots:
        raise rd.fail("max_slots", f"is {max_slots}, below jobs.arrival_slots {jobs.arrival_slots}",
                      "let every job arrive before the episode ends")
    return GeoScenario(name=rd.get(data, "name", "", str), description=rd.get(data, "description", "", str, ""),
                       resources=res, sites=sites, jobs=jobs, max_slots=max_slots,
                       max_workers_per_site=rd.integer(data, "max_workers_per_site", "", 4, low=1, high=64),
                       window=rd.integer(data, "window", "", 8, low=1, high=256))


def _pair(rd: _Reader, table: dict, key: str, path: str, default=..., *, integer: bool = False,
          low: float = 0.0) -> tuple:
    """An inclusive (low, high) range written as a two-element list."""
    value = rd.get(table, key, path, list, default)
    kind = int if integer else (int, float)
    if len(value) != 2 or not all(isinstance(v, kind) and not isinstance(v, bool) for v in value) \
            or not low <= value[0] <= value[1]:
        raise rd.fail(f"{path}.{key}", f"must be [low, high] with {low} <= low <= high"
                      f"{' (integers)' if integer else ''}, got {value!r}", "write e.g. [10, 20]")
    return (int(value[0]), int(value[1])) if integer else (float(value[0]), float(value[1]))


def _vector(rd: _Reader, table: dict, key: str, path: str, size: int, default=..., low: int = 0) -> tuple[int, ...]:
    """One integer per resource: capacities and demands count units, so 0.5 is refused rather than
    truncated to 0."""
    value = rd.get(table, key, path, list, default)
    if len(value) != size or not all(isinstance(v, int) and not isinstance(v, bool) and v >= low for v in value):
        raise rd.fail(f"{path}.{key}", f"must be {size} integers >= {low} (one per resource), got {value!r}",
                      "give one whole number per resource, in the order of `resources`")
    return tuple(value)


def _ordered(rd: _Reader, key: str, low: tuple, high: tuple, low_key: str, res: tuple[str, ...]) -> None:
    """high >= low per resource, naming the first resource that breaks it."""
    for name, a, b in zip(res, low, high):
        if a > b:
            raise rd.fail(key, f"is below {low_key} for {name} ({b} < {a})", f"set the {name} entry >= {a}")


def _table(rd: _Reader, table: dict, key: str, fix: str) -> np.ndarray:
    """A written-out table: a list of equally long rows of numbers (numpy's own error on a ragged or
    non-numeric table names no key)."""
    rows = rd.get(table, key, "sites", list)
    if not rows or not all(isinstance(row, list) and len(row) == len(rows[0]) for row in rows) or \
            not all(isinstance(v, (int, float)) and not isinstance(v, bool) for row in rows for v in row):
        raise rd.fail(f"sites.{key}", f"must be a list of equally long rows of numbers, got {rows!r}", fix)
    return np.asarray(rows, dtype=float).reshape(len(rows), len(rows[0]))


def _matrix(rd: _Reader, table: dict, key: str, size: int, symmetric: bool) -> np.ndarray:
    value = _table(rd, table, key, f"write {size} rows of {size} numbers >= 0, one row per site")
    if value.shape != (size, size) or not np.all(np.isfinite(value)) or np.any(value < 0):
        raise rd.fail(f"sites.{key}", f"must be a {size} x {size} matrix of numbers >= 0", "one row per site")
    if symmetric and (not np.allclose(value, value.T) or np.any(np.diag(value) != 0)):
        raise rd.fail(f"sites.{key}", "must be symmetric with a zero diagonal", "set cost[r][s] = cost[s][r], cost[r][r] = 0")
    return value


def _sites(rd: _Reader, table: dict, res: tuple[str, ...]) -> GeoSites:
    rd.unknown_keys(table, "sites", SITE_KEYS)
    K = len(res)
    if "capacity" in table:  # written out in full
        cap = _table(rd, table, "capacity", f"write one row of {K} integers >= 0 per site, e.g. [[8, 64, 128, 500]]")
        if cap.shape[1] != K or not np.all(np.isfinite(cap)) or np.any(cap < 0) or np.any(cap != np.round(cap)):
            raise rd.fail("sites.capacity", f"must be one row of {K} integers >= 0 per site", "e.g. [[8, 64, 128, 500]]")
        R = cap.shape[0]
        cost = _matrix(rd, table, "cost", R, True)
        link = _matrix(rd, table, "link_mb", R, False) if "link_mb" in table else np.zeros((R, R))
    else:
        R = rd.integer(table, "count", "sites", low=1, high=MAX_GEO_SITES)
        rng = np.random.default_rng(rd.integer(table, "seed", "sites", 0, low=0))
        low = _vector(rd, table, "capacity_low", "sites", K)
        high = _vector(rd, table, "capacity_high", "sites", K)
        _ordered(rd, "sites.capacity_high", low, high, "capacity_low", res)
        cap = np.stack([rng.integers(a, b + 1, size=R) for a, b in zip(low, high)], axis=1)
        c_lo, c_hi = _pair(rd, table, "cost_per_100mb", "sites", [2.0, 8.0])
        upper = np.triu(rng.uniform(c_lo, c_hi, size=(R, R)), 1).round(3)
        cost = upper + upper.T
        l_lo, l_hi = _pair(rd, table, "link_mb_per_slot", "sites", [0.0, 0.0])
        up = np.triu(rng.uniform(l_lo, l_hi, size=(R, R)), 1).round(0)
        link = up + up.T
    names = tuple(f"site_{r}" for r in range(R))
    return GeoSites(names=names, capacity=tuple(tuple(int(v) for v in row) for row in cap),
                    cost=tuple(tuple(float(v) for v in row) for row in cost),
                    link_mb=tuple(tuple(float(v) for v in row) for row in link))


def _jobs(rd: _Reader, table: dict, res: tuple[str, ...], sites: GeoSites,
          sites_table_has_links: bool = False) -> JobRanges:
    rd.unknown_keys(table, "jobs", JOB_KEYS | {f"latency_{p}" for ps in LATENCY_PARAMS.values() for p in ps})
    K, R = len(res), sites.count
    kind = rd.choice(table, "latency", "jobs", LATENCY_KINDS, "sigmoid")
    ranges = _latency_ranges(rd, table, kind)
    data_sites = _pair(rd, table, "data_sites", "jobs", [1, min(R, 3)], integer=True, low=1)
    if data_sites[1] > R:
        raise rd.fail("jobs.data_sites", f"asks for up to {data_sites[1]} sites, the scenario has {R}",
                      f"set the high end <= {R}")
    jr = JobRanges(
        count=rd.integer(table, "count", "jobs", low=1, high=MAX_GEO_JOBS),
        arrival_slots=rd.integer(table, "arrival_slots", "jobs", low=1, high=1_000_000),
        data_sites=data_sites,
        blocks_per_site=_pair(rd, table, "blocks_per_site", "jobs", [10, 20], integer=True, low=1),
        block_mb=_pair(rd, table, "block_mb", "jobs", [50.0, 200.0], low=1e-9),
        epochs=_pair(rd, table, "epochs", "jobs", [1, 3], integer=True, low=1),
        blocks_per_slot=_pair(rd, table, "blocks_per_slot", "jobs", [5, 15], integer=True, low=1),
        exchange_mb=_pair(rd, table, "exchange_mb", "jobs", [30.0, 375.0]),
        worker_low=_vector(rd, table, "worker_low", "jobs", K),
        worker_high=_vector(rd, table, "worker_high", "jobs", K),
        ps_low=_vector(rd, table, "ps_low", "jobs", K), ps_high=_vector(rd, table, "ps_high", "jobs", K),
        latency=kind, latency_ranges=ranges)
    cap = np.asarray(sites.capacity)
    for key, lo, hi in (("worker", jr.worker_low, jr.worker_high), ("ps", jr.ps_low, jr.ps_high)):
        _ordered(rd, f"jobs.{key}_high", lo, hi, f"{key}_low", res)
    link = np.asarray(sites.link_mb)
    off = ~np.eye(R, dtype=bool)
    if np.any((link[off] > 0) & (link[off] < jr.block_mb[1])):
        raise rd.fail("sites.link_mb" if sites_table_has_links else "sites.link_mb_per_slot", f"a link carries {link[off][link[off] > 0].min():g} MB per slot, less "
                      f"than a block of up to {jr.block_mb[1]:g} MB", "let every link carry at least one block "
                      "per slot (or 0 = unlimited)")
    need = np.asarray(jr.worker_high) + np.asarray(jr.ps_high)
    if not np.any(np.all(cap >= need, axis=1)):
        raise rd.fail("jobs.worker_high", f"a worker plus a PS may need {need.tolist()}, which no site holds",
                      "lower the demands or raise the site capacities, so that every job can run somewhere")
    return jr


def _latency_ranges(rd: _Reader, table: dict, kind: str) -> tuple[tuple[str, tuple[float, float]], ...]:
    """The chosen kind's parameter ranges, each drawn value such that f(t) >= 0 and f is
    non-decreasing for t >= 0 (a latency cost must never pay a job for waiting)."""
    for other, params in LATENCY_PARAMS.items():  # (no parameter name belongs to two kinds)
        stray = sorted(f"latency_{p}" for p in params if other != kind and f"latency_{p}" in table)
        if stray:  # it would load and be ignored: the file says something the scenario does not do
            raise rd.fail(f"jobs.{stray[0]}", f"is a parameter of latency = \"{other}\", not of the chosen "
                          f"latency = \"{kind}\"", f"remove it, or set latency = \"{other}\"")
    ranges = {}
    for p, default in LATENCY_PARAMS[kind].items():
        lo, hi = _pair(rd, table, f"latency_{p}", "jobs", list(default), low=-math.inf)
        key = f"jobs.latency_{p}"
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise rd.fail(key, f"must be finite, got [{lo}, {hi}]", "write ordinary numbers")
        if p in LATENCY_POSITIVE and lo <= 0:
            raise rd.fail(key, f"must be > 0 (it divides), got low {lo}", "set the low end > 0, e.g. 1.0")
        if p in LATENCY_NON_NEGATIVE and lo < 0:
            raise rd.fail(key, f"must be >= 0 (f(t) >= 0 for t >= 0), got low {lo}", "set the low end >= 0")
        ranges[p] = (lo, hi)
    if kind == "piecewise" and ranges["tau1"][1] > ranges["tau2"][0]:
        raise rd.fail("jobs.latency_tau1", f"may draw above latency_tau2 ({ranges['tau1'][1]} > "
                      f"{ranges['tau2'][0]}): missing the deadline would cost less than meeting it",
                      "keep the high end of latency_tau1 <= the low end of latency_tau2")
    return tuple(ranges.items())


def draw_jobs(scenario: GeoScenario, seed: int) -> tuple[GeoJob, ...]:
    """The jobs of episode `seed`, in arrival order; the same for every policy."""
    jr = scenario.jobs
    rng = np.random.default_rng([JOB_STREAM, seed])
    arrivals = np.sort(rng.integers(0, jr.arrival_slots, size=jr.count))
    return tuple(draw_job(scenario, int(a), rng) for a in arrivals)


def draw_job(scenario: GeoScenario, arrival: int, rng: np.random.Generator) -> GeoJob:
    """One job arriving at `arrival`, drawn from the `[jobs]` ranges in a fixed order of draws (the
    episode's jobs, and the futures a planner imagines from the same model)."""
    jr, R = scenario.jobs, scenario.num_sites
    blocks = np.zeros(R, dtype=np.int64)
    where = rng.choice(R, size=int(rng.integers(jr.data_sites[0], jr.data_sites[1] + 1)), replace=False)
    blocks[where] = rng.integers(jr.blocks_per_site[0], jr.blocks_per_site[1] + 1, size=where.size)
    params = {p: float(rng.uniform(lo, hi)) for p, (lo, hi) in jr.latency_ranges}
    return GeoJob(
        arrival=int(arrival), blocks=tuple(int(b) for b in blocks),
        block_mb=round(float(rng.uniform(*jr.block_mb)), 1),
        epochs=int(rng.integers(jr.epochs[0], jr.epochs[1] + 1)),
        blocks_per_slot=int(rng.integers(jr.blocks_per_slot[0], jr.blocks_per_slot[1] + 1)),
        worker=tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(jr.worker_low, jr.worker_high)),
        ps=tuple(int(rng.integers(lo, hi + 1)) for lo, hi in zip(jr.ps_low, jr.ps_high)),
        exchange_mb=round(float(rng.uniform(*jr.exchange_mb)), 1),
        latency=LatencyCost(kind=jr.latency, **params))
