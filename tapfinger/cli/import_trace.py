"""`tapfinger import-trace`: turn a window of the Philly job trace into an arrival trace CSV."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-trace", help="convert a window of the Philly job trace into an arrival trace CSV",
        description="Read the Microsoft Philly job summary (timestamp,duration,num_gpus,gpu_time,...), keep "
                    "the jobs submitted in [--start, --start + --hours), a seeded fraction --scale of them, "
                    "map each to a task type by its GPU-time bucket and scale its work by its duration. "
                    "Writes arrival_seconds,task_type,work,deadline_seconds rows for a scenario with "
                    "[arrivals] process = \"trace\". The mapping is in docs/traces.md.")
    p.add_argument("--philly", default="shared:philly/philly.csv",
                   help="the Philly CSV (default shared:philly/philly.csv, looked up like scenario data)")
    p.add_argument("--start", required=True, help="window start on the trace's clock, e.g. '2017-10-09 08:00'")
    p.add_argument("--hours", type=float, required=True, help="window length in hours")
    p.add_argument("--scale", type=float, default=1.0,
                   help="fraction of the window's jobs to keep, sampled with --seed (default 1 = all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --scale sample (default 0)")
    p.add_argument("--types", default="cnn,audio,lm",
                   help="task types, lightest first, one per GPU-time bucket (default cnn,audio,lm: the "
                        "local profile's types in order of measured time)")
    p.add_argument("--gpu-time-edges", default="300,3600",
                   help="GPU-seconds separating the buckets, one fewer than --types (default 300,3600)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="replay this many times faster than the trace's clock (default 1)")
    p.add_argument("--min-work", type=float, default=0.25, help="lower clip of a job's work (default 0.25)")
    p.add_argument("--max-work", type=float, default=4.0, help="upper clip of a job's work (default 4)")
    p.add_argument("--out", required=True,
                   help="trace CSV to write; an existing file is replaced only if import-trace wrote it")
    p.add_argument("--force", action="store_true",
                   help="replace --out even if it is not a trace that import-trace wrote")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tapfinger.sim.scenario import resolve_data_path
    from tapfinger.sim.traces import TraceError, write_trace
    from tapfinger.testbed.philly import PhillyImport, import_philly, parse_start, read_philly

    check_out(args.out, args.force)
    try:
        edges = tuple(float(x) for x in args.gpu_time_edges.split(",") if x.strip())
    except ValueError:
        raise TraceError(f"--gpu-time-edges: expected comma-separated numbers, got {args.gpu_time_edges!r}") from None
    spec = PhillyImport(start=parse_start(args.start), hours=args.hours, scale=args.scale, seed=args.seed,
                        types=tuple(t.strip() for t in args.types.split(",") if t.strip()),
                        gpu_time_edges=edges, time_scale=args.time_scale, min_work=args.min_work,
                        max_work=args.max_work)
    spec.check()
    jobs = read_philly(resolve_data_path(args.philly, None))
    trace = import_philly(jobs, spec, source=args.philly)
    try:
        write_trace(args.out, trace)
    except OSError as exc:  # e.g. a folder without write permission
        raise TraceError(f"--out {args.out}: cannot be written ({exc.strerror}). Fix: choose a writable "
                         f"place") from None
    counts = {t: trace.task_type.count(t) for t in spec.types}
    print(f"wrote {trace.num_tasks} task(s) to {args.out} ({', '.join(f'{t} {n}' for t, n in counts.items())}; "
          f"last arrival at {trace.arrival_seconds[-1]:g} s, mean work {trace.work.mean():.2f})")
    return 0


def check_out(out: str, force: bool) -> None:
    """Refuse, before reading anything, an --out that cannot be written or that holds a file
    this command did not write (the import would replace it)."""
    from pathlib import Path

    from tapfinger.sim.traces import TraceError
    from tapfinger.testbed.philly import made_by_import

    path = Path(out)
    if path.is_dir():
        raise TraceError(f"--out {out}: is a directory. Fix: give a file path such as {path / 'trace.csv'}")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise TraceError(f"--out {out}: {parent} is a file, not a directory. Fix: choose another --out")
    if path.exists() and not force and not made_by_import(path):
        raise TraceError(f"--out {out}: the file exists and was not written by `tapfinger import-trace`. "
                         f"Fix: choose another --out, or add --force to replace it")
