"""`tapfinger demo`: the README's main job — every scheduler on the embedded default scenario."""

from __future__ import annotations

import argparse
from pathlib import Path

from tapfinger.cli.evaluate import add_common, evaluate_and_report, evaluate_geo_and_report


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="compare the schedulers on edge-default (table + plots)",
                       description="Run the schedulers on the embedded edge-default scenario (no file "
                                   "outside the package is needed), print the comparison table and write "
                                   "plots. The learned policy is included when a checkpoint ships for the "
                                   "scenario. Finished episodes are kept in OUT/episodes.partial.jsonl until the "
                                   "run completes, so after Ctrl-C the same command resumes where it stopped.")
    add_common(p, "auto", 20)
    p.add_argument("--out", default="results/demo", help="output folder (default: results/demo)")
    p.add_argument("--geo", default="geo-6", metavar="SCENARIO",
                   help="then the geo schedulers (and the shipped tapfinger-geo) on this geo scenario, on the "
                        "same number of seeds, into OUT/SCENARIO; '' skips it (default: geo-6, seconds)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    evaluate_and_report(args, Path(args.out))
    if args.geo:
        # the geo-distributed setting (issue 16) has its own schedulers; its own folder keeps the files apart
        geo = argparse.Namespace(**{**vars(args), "scenario": args.geo, "policies": "auto", "checkpoint": None})
        print(f"\n## the geo-distributed setting: {args.geo}\n")
        evaluate_geo_and_report(geo, Path(args.out) / args.geo)
    return 0
