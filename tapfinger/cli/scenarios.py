"""`tapfinger scenarios`: list the built-in scenarios, or print one as TOML."""

from __future__ import annotations

import argparse

from tapfinger.sim.scenario import builtin_names, builtin_text, load_scenario


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scenarios", help="list built-in scenarios (one line each) or show one",
                       description="List the built-in scenarios, one line each. With --show NAME, print "
                                   "that scenario's TOML (a starting point for your own file).")
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


def run(args: argparse.Namespace) -> int:
    if args.show:
        if args.show not in builtin_names():
            raise ValueError(f"no built-in scenario {args.show!r}; built-in: {', '.join(builtin_names())}")
        print(builtin_text(args.show), end="")
        return 0
    for name in builtin_names():
        print(summary_line(name))
    return 0
