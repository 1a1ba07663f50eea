"""`tapfinger scenarios`: list the built-in scenarios, or print one as TOML."""

from __future__ import annotations

import argparse

import numpy as np

from tapfinger.sim.geo.scenario import geo_builtin_names, geo_builtin_text, load_geo_scenario
from tapfinger.sim.scenario import builtin_names, builtin_text, load_scenario


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scenarios", help="list built-in scenarios (one line each) or show one",
                       description="List the built-in scenarios (geo-distributed ones last), one line each. With "
                                   "--show NAME, print that scenario's TOML (a starting point for your own file).")
    p.add_argument("--show", metavar="NAME", help="print this built-in scenario's TOML file")
    p.set_defaults(func=run)


def summary_line(name: str) -> str:
    sc = load_scenario(name, resolve_files=False)
    nodes = sum(len(c.nodes) for c in sc.clusters)
    arr = (f"poisson {sc.arrivals.rate:g}/slot, {sc.arrivals.tasks} tasks" if sc.arrivals.process == "poisson"
           else f"trace {sc.arrivals.trace}")
    types = ",".join(t.name for t in sc.task_types)
    u = sc.uncertainty
    hidden = (f"; uncertain: speed sigma {u.speed_sigma:g}, work sigma {u.work_sigma:g}"
              + "".join(f", {t} speed x{b:g}" for t, b in u.speed_bias)) if u.active else ""
    return (f"{name:<18} {sc.num_clusters} clusters, {nodes} nodes, {'/'.join(sc.resources)}; {arr}; "
            f"types {types}{hidden} — {sc.description}")


def geo_summary_line(name: str) -> str:
    """One line of a geo built-in (issue 16): sites, jobs, arrival slots, link capacities."""
    sc = load_geo_scenario(name)
    _, _, link = sc.sites.arrays()
    off = link[~np.eye(sc.num_sites, dtype=bool)]
    if not off.any():
        links = "unlimited links"
    else:  # 0 is an unlimited link (model.GeoSites.link_mb)
        links = f"links {off[off > 0].min():g}-{off.max():g} MB/slot" + (", some unlimited" if (off == 0).any() else "")
    return (f"{name:<18} geo: {sc.num_sites} sites, {sc.jobs.count} jobs over {sc.jobs.arrival_slots} arrival "
            f"slots, {links} — {sc.description}")


def run(args: argparse.Namespace) -> int:
    if args.show:
        if args.show in geo_builtin_names():
            print(geo_builtin_text(args.show), end="")
            return 0
        if args.show not in builtin_names():
            raise ValueError(f"no built-in scenario {args.show!r}; built-in: "
                             f"{', '.join(builtin_names() + geo_builtin_names())}")
        print(builtin_text(args.show), end="")
        return 0
    for name in builtin_names():
        print(summary_line(name))
    for name in geo_builtin_names():
        print(geo_summary_line(name))
    return 0
