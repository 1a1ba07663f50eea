"""`tapfinger profile`: measure real training steps per (CPUs, GPUs) into a profile CSV."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile", help="measure real PyTorch training tasks per CPU/GPU count into a profile CSV",
        description="Train small built-in models (an image CNN, a Transformer LM, a speech model) on "
                    "synthetic data, each measurement in a fresh subprocess pinned to N CPUs (and, with "
                    "CUDA, data parallel on G GPUs). Writes task,cpus,gpus,seconds,peak_mem_mb,... rows "
                    "(the testbed schema plus a header) and a sidecar OUT.json describing the machine. "
                    "Re-running with the same arguments resumes: rows already in OUT are skipped. "
                    "See docs/profiling.md.")
    p.add_argument("--models", required=True,
                   help="comma-separated model names: cnn, lm, audio (size small) or <family>-tiny|small|base")
    p.add_argument("--cpus", required=True, help="comma-separated CPU counts, e.g. 1,2,4")
    p.add_argument("--gpus", default="0",
                   help="comma-separated GPU counts (default 0 = CPU only); counts > 0 need CUDA and are "
                        "skipped with a message without it")
    p.add_argument("--batch-sizes", default="",
                   help="comma-separated batch sizes; each row's task is then named <model>-b<size> "
                        "(default: each model's own batch size, task named after the model)")
    p.add_argument("--samples", type=int, default=512,
                   help="the fixed amount of work timed per measurement, in training samples (default 512)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default 2)")
    p.add_argument("--repeats", type=int, default=1, help="measurements per (model, cpus, gpus) (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and synthetic data (default 0)")
    p.add_argument("--wait-idle", type=float, default=60.0,
                   help="before each measurement, wait up to this many seconds for its CPUs to be idle "
                        "(default 60; 0 = do not wait)")
    p.add_argument("--max-contention", type=float, default=0.1,
                   help="re-measure when other processes used more than this share of the measurement's "
                        "CPUs (default 0.1)")
    p.add_argument("--retries", type=int, default=2,
                   help="re-measurements allowed per row; the least disturbed is kept (default 2)")
    p.add_argument("--out", required=True,
                   help="profile CSV to write or resume; the sidecar is OUT with .json (e.g. prof.csv -> prof.json)")
    p.add_argument("--force", action="store_true",
                   help="replace --out or its sidecar even if they were not written by `tapfinger profile` "
                        "(without it such files are never overwritten)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: `tapfinger --help` should not load the profiler.
    from tapfinger.testbed.profile_files import sidecar_path
    from tapfinger.testbed.profiler import ProfileRequest, parse_int_list, parse_models, run_profile

    req = ProfileRequest(
        models=parse_models(args.models),
        cpus=parse_int_list(args.cpus, "--cpus"),
        gpus=parse_int_list(args.gpus, "--gpus"),
        batch_sizes=parse_int_list(args.batch_sizes, "--batch-sizes") if args.batch_sizes else (),
        samples=args.samples, warmup=args.warmup, repeats=args.repeats, seed=args.seed,
        wait_idle=args.wait_idle, max_contention=args.max_contention, retries=args.retries)
    rows = run_profile(req, args.out, progress=not args.no_progress, argv=req.command(args.out), force=args.force)
    print(f"wrote {len(rows)} row(s) to {args.out} (machine and parameters in {sidecar_path(args.out)})")
    return 0
