"""`tapfinger export`: write a trained policy as an ONNX or torch.export (.pt2) program."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint as an ONNX or .pt2 program (evaluate it with onnx:FILE / pt2:FILE)",
        description="Export the network of a checkpoint as a program with a plain-tensor interface (graph "
                    "arrays and masks in, greedy actions and task logits out; sizes dynamic in clusters, "
                    "nodes and tasks), with its metadata (scenario and fingerprint, feature layout, acting "
                    "options, versions, model config). The file is compared with the eager model on rounds "
                    "of a greedy episode before it replaces OUT. Evaluate it with `tapfinger evaluate "
                    "--policies onnx:OUT` (onnxruntime; no torch needed) or pt2:OUT. See docs/export.md.")
    p.add_argument("--checkpoint", help="checkpoint written by `tapfinger train` (RUN_DIR/checkpoint.pt)")
    p.add_argument("--format", choices=["onnx", "pt2"], default=None,
                   help="onnx (onnxruntime) or pt2 (torch.export.save); default: from the suffix of --out")
    p.add_argument("--out", help="file to write (atomically), e.g. policy.onnx or policy.pt2")
    p.add_argument("--scenario", default=None,
                   help="scenario the checkpoint was trained on, if it is a TOML file (default: its built-in name)")
    p.add_argument("--no-verify", action="store_true", help="skip the comparison with the eager model")
    p.add_argument("--show", metavar="FILE", default=None,
                   help="print the metadata of an exported file and exit (a .pt2 program is checked as loading it "
                        "would be, but never loaded: a file that could run code is refused)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.show:
        from agents.exported import read_metadata

        print(json.dumps(read_metadata(args.show), indent=1))
        return 0
    if not args.checkpoint or not args.out:
        raise ValueError("--checkpoint and --out are required (or --show FILE). Example: tapfinger export "
                         "--checkpoint runs/x/checkpoint.pt --out policy.onnx")
    fmt = args.format
    if fmt is None:
        suffix = args.out.rsplit(".", 1)[-1].lower() if "." in args.out else ""
        if suffix not in ("onnx", "pt2"):
            raise ValueError(f"cannot tell the format from {args.out!r}. Fix: pass --format onnx|pt2, or name the "
                             f"file *.onnx or *.pt2")
        fmt = suffix
    from agents.learned.export import export_checkpoint
    from tapfinger.sim.scenario import load_scenario

    scenario = load_scenario(args.scenario) if args.scenario else None
    result = export_checkpoint(args.checkpoint, args.out, fmt, scenario=scenario, verify=not args.no_verify)
    meta = result.metadata
    checked = (f"matches the eager model on {result.verified_rounds} rounds" if result.verified_rounds
               else "not verified")
    print(f"wrote {result.path} ({fmt}; scenario {meta['scenario']}, fingerprint {meta['scenario_fingerprint']}; "
          f"{checked})")
    print(f"evaluate it with: tapfinger evaluate --scenario {meta['scenario']} --policies {fmt}:{result.path}")
    return 0
