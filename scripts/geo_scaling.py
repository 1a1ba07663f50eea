"""Total cost of the geo policies against the number of sites and the number of jobs (issue 16):
the shape of the patent's figures 2 and 3, from geo-50 (or another geo scenario, --base).

    .venv/bin/python scripts/geo_scaling.py [--base geo-50] [--sites 10,20,30,40,50]
        [--jobs 20,40,60,80,100] [--seeds 3] [--seed-start 1000] [--policies okita,fifo,...]
        [--workers 2] [--out results/geo_scaling] [--quiet]

The sites sweep re-draws the site table (capacities, bandwidth costs, link capacities) at each
count: the base's TOML with `[sites] count` changed goes through the scenario parser
(`parse_geo_scenario`, every check included), from the same `[sites] seed`; the jobs' ranges are the
base's (the high end of `jobs.data_sites` lowered to the count where it is above it). The jobs
sweep keeps the base's sites and changes `jobs.count` (`dataclasses.replace`); the arrivals still
spread over the base's `arrival_slots`, so more jobs means more load. A point equal to the base
(geo-50: 50 sites, 100 jobs) is the base itself and is evaluated once for both sweeps.

Every point is one `evaluate_geo` (all policies on the same seeds: common random numbers) into
OUT/points/AXIS-VALUE/results.json. OUT/geo_scaling.json gathers, per sweep and point, every
policy's total cost and its parts (mean, 95% CI, per seed) and is rewritten after each point;
OUT/cost_vs_sites.png and OUT/cost_vs_jobs.png draw total cost with 95% CI bands, one line per
policy. Ctrl-C keeps the finished points and the finished episodes of the point under way: the
same command run again skips a point whose results.json has the same scenario, policies and seeds,
and resumes the interrupted one episode by episode.

The defaults (5 + 5 points, 3 seeds, the registered heuristics) take a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import math
import os
import sys
from pathlib import Path

from tqdm import tqdm

from tapfinger.evaluation.geo_harness import (check_geo_policies, default_geo_policies, evaluate_geo,
                                              scenario_digest)
from tapfinger.evaluation.geo_plots import SCALING_PLOTS, scaling_plot
from tapfinger.sim.geo.model import GeoScenario
from tapfinger.sim.geo.scenario import geo_scenario_data, parse_geo_scenario

SUMMARY = "geo_scaling.json"
KEPT = ("total_cost", "latency_cost", "transfer_cost", "exchange_cost", "mb_moved", "avg_jct", "unfinished")


def with_sites(data: dict, source: str, count: int) -> GeoScenario:
    """The base with `count` sites, its site table re-drawn by the parser from the same seed."""
    if "count" not in data.get("sites", {}):
        raise ValueError(f"--sites: {source} writes its site table out in full, so there is no count to "
                         f"change. Fix: use a base whose [sites] has count and seed (geo-50), or pass --sites ''")
    base = parse_geo_scenario(data, source)
    edited = {**data, "sites": {**data["sites"], "count": count}, "jobs": dict(data["jobs"])}
    if count != base.num_sites:
        edited["name"] = f"{base.name}-sites{count}"
    low, high = edited["jobs"].get("data_sites", [1, min(base.num_sites, 3)])
    edited["jobs"]["data_sites"] = [min(low, count), min(high, count)]
    return parse_geo_scenario(edited, f"{source} with [sites] count = {count}")


def with_jobs(base: GeoScenario, count: int) -> GeoScenario:
    if count < 1:
        raise ValueError(f"--jobs {count}: a point needs at least 1 job. Fix: give counts >= 1")
    if count == base.jobs.count:
        return base
    jobs = dataclasses.replace(base.jobs, count=count)
    return dataclasses.replace(base, name=f"{base.name}-jobs{count}", jobs=jobs)


def counts(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{flag} {text!r}: must be comma-separated integers. Fix: write e.g. 10,20,30") from None
    if any(v < 1 for v in values) or len(set(values)) != len(values):
        raise ValueError(f"{flag} {text!r}: counts must be >= 1, each once. Fix: correct it")
    return values


def points(args: argparse.Namespace) -> list[tuple[str, int, GeoScenario]]:
    """(axis, value, scenario) of every point, each built (and so checked) before any runs."""
    data, source = geo_scenario_data(args.base)
    base = parse_geo_scenario(data, source)
    out = [("sites", r, with_sites(data, source, r)) for r in counts(args.sites, "--sites")]
    return out + [("jobs", j, with_jobs(base, j)) for j in counts(args.jobs, "--jobs")]


def _reusable(path: Path, scenario: GeoScenario, policies: list[str], seeds: list[int]) -> dict | None:
    """A point's results.json from an earlier run, when it is of the same scenario, policies and seeds."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = (old.get("scenario_digest") == scenario_digest(scenario) and old.get("seeds") == seeds
            and list(old.get("policies", {})) == policies)
    return old if same else None


def _write_json(summary: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # replaced in one step: never half a file
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, path)


def run(args: argparse.Namespace) -> dict:
    policies = (default_geo_policies() if args.policies == "auto"
                else [p.strip() for p in args.policies.split(",") if p.strip()])
    check_geo_policies(policies)
    if not policies:
        raise ValueError("no geo policy is registered (agents/geo/registry.py is missing). Fix: pass --policies")
    if args.seeds < 1 or args.seed_start < 0 or args.workers < 1:
        raise ValueError("--seeds and --workers must be >= 1, --seed-start >= 0. Fix: correct them")
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    todo = points(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"base": args.base, "policies": policies, "seeds": seeds,
               "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
               "sweeps": {"sites": [], "jobs": []}}
    done: dict[str, tuple] = {}  # scenario digest -> (results, folder): a point equal to another runs once
    for axis, value, sc in tqdm(todo, desc="geo scaling", unit="point", disable=args.quiet):
        digest = scenario_digest(sc)
        if digest not in done:
            where = out / "points" / f"{axis}-{value}"
            done[digest] = (_reusable(where / "results.json", sc, policies, seeds)
                            or evaluate_geo(sc, policies, seeds, workers=args.workers, out=where,
                                            progress=not args.quiet)), where
        res, where = done[digest]
        summary["sweeps"][axis].append({
            "x": value, "scenario": sc.name, "sites": sc.num_sites, "jobs": sc.jobs.count,
            "results": str(where / "results.json"), "best_heuristic": res["best_heuristic"],
            "policies": {n: {k: res["policies"][n][k] for k in KEPT} for n in policies}})
        _write_json(_strict(summary), out / SUMMARY)
    for axis, file in SCALING_PLOTS.items():
        if summary["sweeps"][axis]:
            scaling_plot(summary["sweeps"][axis], axis, out / file, title=_title(summary, axis, todo))
    return summary


def _strict(value):
    """Non-finite floats as null (strict JSON), as results.json writes them."""
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strict(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _title(summary: dict, axis: str, todo: list) -> str:
    fixed = {p[2].num_sites if axis == "jobs" else p[2].jobs.count for p in todo if p[0] == axis}
    other = "sites" if axis == "jobs" else "jobs"
    return (f"{summary['base']}: total cost vs number of {axis} ({', '.join(map(str, sorted(fixed)))} {other}, "
            f"{len(summary['seeds'])} seeds)")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="geo-50",
                   help="geo built-in or TOML file the points are made from (default: geo-50)")
    p.add_argument("--sites", default="10,20,30,40,50", help="site counts of the sites sweep ('' skips it)")
    p.add_argument("--jobs", default="20,40,60,80,100", help="job counts of the jobs sweep ('' skips it)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per point (default: 3)")
    p.add_argument("--seed-start", type=int, default=1000, help="first seed (default: 1000)")
    p.add_argument("--policies", default="auto",
                   help="comma-separated geo policies (default: every registered one)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="worker processes (default: the cores, at most 2)")
    p.add_argument("--out", default="results/geo_scaling", help="output folder (default: results/geo_scaling)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        summary = run(args)
    except KeyboardInterrupt as exc:
        said = f": {exc.args[0]}" if exc.args else ""
        print(f"geo_scaling: interrupted{said}; the finished points are in {Path(args.out) / SUMMARY}",
              file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError) as exc:
        print(f"geo_scaling: error: {exc}", file=sys.stderr)
        return 2
    for axis, rows in summary["sweeps"].items():
        for row in rows:
            costs = ", ".join(f"{n} {v['total_cost']['mean']:.0f}" for n, v in row["policies"].items())
            print(f"{axis}={row['x']}: {costs}")
    print(f"wrote {Path(args.out) / SUMMARY} and the plots {', '.join(SCALING_PLOTS.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
