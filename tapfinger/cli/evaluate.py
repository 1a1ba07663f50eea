"""`tapfinger evaluate`: compare schedulers on the same seeds, with CIs, a JSON file and plots."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import warnings
from pathlib import Path

from tapfinger.sim.geo.scenario import is_geo_scenario, load_geo_scenario
from tapfinger.sim.scenario import load_scenario


def add_common(p: argparse.ArgumentParser, default_policies: str, default_seeds: int) -> None:
    p.add_argument("--scenario", default="edge-default", help="built-in name or TOML file (default: edge-default)")
    p.add_argument("--policies", default=default_policies,
                   help="comma-separated policy names (default: auto = tapfinger when a checkpoint ships for the "
                        "scenario, greedy, optimus, tiresias, sjf, fifo, drf, min, random, and on a scenario with "
                        "deadlines, declines or a cloud tier also edgeflow, elasticflow-edge, elasticflow, edf; on a "
                        "geo scenario every geo policy); see --list-policies (with --scenario geo-6: the geo ones)")
    p.add_argument("--seeds", type=int, default=default_seeds, help=f"number of seeds (default: {default_seeds})")
    p.add_argument("--seed-start", type=int, default=1000,
                   help="first seed (default: 1000; training uses seeds below 1000)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="parallel worker processes (default: number of cores, at most 2; never more than "
                        "there are episodes)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="where the episodes run: local = worker processes on this machine; ray = Ray tasks "
                        "(pip install '.[ray]'), on this machine or the cluster at --ray-address, at most "
                        "--workers at a time; the same results either way (default: local)")
    p.add_argument("--ray-address", default=None,
                   help="with --backend ray: a running Ray cluster, HOST:PORT as `ray start --head` prints it "
                        "(or ray://HOST:10001, or auto); default: Ray is started on this machine with --workers "
                        "CPUs (docs/scale-out.md)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint for the `tapfinger` policy (default: the shipped one for the scenario)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="compare policies on common seeds; table, results.json, plots",
                       description="Run every policy on the same seeds (common random numbers), in parallel "
                                   "processes. Prints avg JCT mean and 95% CI, p50/p95/p99 JCT, makespan, "
                                   "utilisation, decisions/s and each policy's paired difference from the best "
                                   "heuristic (and, for a scenario with deadlines, the deadline satisfaction "
                                   "ratio, declined tasks and lateness; for one with faults, work lost and "
                                   "restarts; for a geo scenario, family = \"geo\", the total cost, its latency, "
                                   "transfer and exchange parts, MB moved and JCT); writes OUT/results.json and "
                                   "PNG plots. Finished episodes are "
                                   "kept in OUT/episodes.partial.jsonl until the evaluation completes, so "
                                   "after Ctrl-C the same command resumes where it stopped.")
    add_common(p, "auto", 30)
    p.add_argument("--out", default="results/evaluate", help="output folder (default: results/evaluate)")
    p.add_argument("--list-policies", action="store_true", help="list the policy names and exit")
    p.set_defaults(func=run)


def policy_list(text: str) -> list[str]:
    """The names of --policies: at least one, each once."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"--policies {text!r} names no policy. Fix: give comma-separated names, e.g. "
                         f"--policies greedy,min (`tapfinger evaluate --list-policies` lists them)")
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ValueError(f"--policies names {twice!r} twice. Fix: name each policy once")
    return names


def check_flags(args: argparse.Namespace) -> None:
    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: at least 1 seed is needed. Fix: pass --seeds 1 or more")
    if args.seed_start < 0:
        raise ValueError(f"--seed-start {args.seed_start}: seeds must be >= 0 (they seed numpy's generators). "
                         f"Fix: pass --seed-start 0 or more (evaluation uses 1000 and up by default; training "
                         f"uses seeds below 1000)")
    if args.workers < 1:
        raise ValueError(f"--workers {args.workers}: at least 1 worker process is needed. Fix: pass --workers 1 "
                         f"or more")
    if args.ray_address and args.backend != "ray":
        raise ValueError(f"--ray-address {args.ray_address} is only used by Ray. Fix: add --backend ray, or drop "
                         f"--ray-address")
    if args.backend == "ray":  # before any episode: a missing Ray says how to install it at once
        from tapfinger.evaluation.ray_backend import import_ray

        import_ray()


OUT_FIX = "Fix: pass --out a folder you can write to (it is created if missing)"


def check_output_dir(out: Path, names: list[str]) -> None:
    """Before any episode runs: `out` is, or can be made, a folder this process can write in,
    and none of the files the command writes there (`names`) is in the way."""
    try:
        _check_output_dir(out, names)
    except OSError as exc:  # e.g. a folder above it that this user may not look into
        raise ValueError(f"--out {out} cannot be used ({exc.strerror or exc}). {OUT_FIX}") from None


def _check_output_dir(out: Path, names: list[str]) -> None:
    fix = OUT_FIX
    if out.exists() and not out.is_dir():
        kind = "a file, not a folder" if out.is_file() else "not a folder"
        raise ValueError(f"--out {out} is {kind}. {fix}, or move it away")
    above = next((p for p in out.parents if p.exists()), None)
    if not out.exists() and above is not None and not above.is_dir():
        raise ValueError(f"--out {out}: {above} is a file, so no folder can be made under it. {fix}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: the folder cannot be created ({exc.strerror or exc}). {fix}") from None
    try:  # a file made and removed again: os.access does not see read-only mounts, ACLs, quotas
        fd, probe = tempfile.mkstemp(dir=out, prefix=".tapfinger-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"--out {out} is not writable ({exc.strerror or exc}). {fix}") from None
    for name in names:
        path = out / name
        if path.exists() and not path.is_file():
            raise ValueError(f"--out {out}: {path} is a folder (or not a regular file), so {name} cannot be "
                             f"written there. Fix: remove or rename {path}, or pass another --out")
        if path.is_file() and not os.access(path, os.W_OK):
            raise ValueError(f"--out {out}: {path} is not writable. Fix: make it writable, or pass another --out")


def _one_line_warnings(command: str):
    """A `warnings.showwarning` that prints a warning as one line of the command's stderr."""
    from tqdm import tqdm

    def show(message, category, filename, lineno, file=None, line=None):
        tqdm.write(f"tapfinger {command}: warning: {message}", file=sys.stderr)  # above the progress bar
    return show


def evaluate_and_report(args: argparse.Namespace, out: Path) -> dict:
    if is_geo_scenario(args.scenario):  # issue 16: another model, its own harness
        return evaluate_geo_and_report(args, out)
    from agents.registry import policy_options
    from tapfinger.evaluation.episode_cache import CACHE_NAME, EpisodeCache
    from tapfinger.evaluation.harness import EvalConfig, run_evaluation
    from tapfinger.evaluation.plots import DEADLINE_PLOT, FAULT_PLOT, PLOT_FILES

    # Every flag, the scenario, the policies and the output place are checked before any
    # episode runs: a bad one must not cost an evaluation's worth of waiting.
    check_flags(args)
    if args.policies == "auto":
        from agents.registry import demo_policies

        args.policies = ",".join(demo_policies(args.scenario))
    names = policy_list(args.policies)
    scenario = load_scenario(args.scenario)
    # The registry resolves each name to its class (an unknown name is a ValueError naming the
    # known ones) and gives a policy built from a checkpoint its --checkpoint.
    options = {n: policy_options(n, scenario, checkpoint=args.checkpoint) for n in names}
    # The deadline and fault plots are checked too: whether they are written depends on episodes not run yet.
    plots = [] if args.no_plots else [*PLOT_FILES, DEADLINE_PLOT, FAULT_PLOT]
    check_output_dir(out, ["results.json", CACHE_NAME, *plots])
    cache = EpisodeCache(out / CACHE_NAME)  # finished episodes, kept until the results are written
    cfg = EvalConfig(scenario, names, list(range(args.seed_start, args.seed_start + args.seeds)),
                     workers=args.workers, policy_options=options, progress=not args.quiet, cache=cache,
                     backend=args.backend, ray_address=args.ray_address)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(getattr(args, "command", None) or "evaluate")
        results = run_evaluation(cfg)  # on Ctrl-C: KeyboardInterrupt("kept N of M episodes in ...")
        try:
            _report(args, out, results)
        except KeyboardInterrupt:  # every episode is in the cache: a rerun only writes the outputs
            raise KeyboardInterrupt(f"kept all {len(cfg.policies) * len(cfg.seeds)} episodes in {cache.path}; "
                                    f"rerun the same command to write the results") from None
    cache.remove()
    return results


def _report(args: argparse.Namespace, out: Path, results: dict) -> None:
    from tapfinger.evaluation.harness import format_table, write_results

    print(format_table(results))
    path = write_results(results, out)
    print(f"\nwrote {path}")
    if not args.no_plots:
        from tapfinger.evaluation.plots import write_plots

        for p in write_plots(results, out):
            print(f"wrote {p}")


def check_geo_flags(args: argparse.Namespace) -> None:
    """The flags of the edge evaluation that a geo one has no use for are refused, by name."""
    if args.backend != "local" or args.ray_address:
        flag = "--ray-address" if args.ray_address else "--backend ray"
        raise ValueError(f"{flag}: a geo scenario ({args.scenario}) is evaluated in local worker processes only. "
                         f"Fix: drop --backend and --ray-address (--workers sets the processes)")


def geo_policy_spec(names: list[str], checkpoint: str | None):
    """The names, with `--checkpoint` given to the learned geo policy (a factory the harness calls)."""
    if checkpoint is None:
        return names
    from agents.geo.registry import LEARNED_GEO_POLICIES, make_geo_policy

    learned = [n for n in names if n in LEARNED_GEO_POLICIES]
    if not learned:
        raise ValueError(f"--checkpoint {checkpoint}: none of the geo policies {names} reads a checkpoint. Fix: "
                         f"add {LEARNED_GEO_POLICIES[0]} to --policies, or drop --checkpoint")
    return {n: (functools.partial(make_geo_policy, n, checkpoint=checkpoint) if n in learned else None)
            for n in names}


def evaluate_geo_and_report(args: argparse.Namespace, out: Path) -> dict:
    """`evaluate_and_report` for a geo scenario: tapfinger.evaluation.geo_harness, its table and plots."""
    from tapfinger.evaluation.episode_cache import CACHE_NAME
    from tapfinger.evaluation.geo_harness import (check_geo_policies, default_geo_policies, evaluate_geo,
                                                  format_geo_table)
    from tapfinger.evaluation.geo_plots import GEO_PLOT_FILES, write_geo_plots

    check_geo_flags(args)
    check_flags(args)
    scenario = load_geo_scenario(args.scenario)
    names = (default_geo_policies(scenario.name, args.checkpoint) if args.policies == "auto"
             else policy_list(args.policies))
    if not names:
        raise ValueError("no geo policy is registered (agents/geo/registry.py is missing). Fix: install the "
                         "complete package")
    check_geo_policies(names)
    check_output_dir(out, ["results.json", CACHE_NAME, *([] if args.no_plots else GEO_PLOT_FILES)])
    seeds = list(range(args.seed_start, args.seed_start + args.seeds))
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warnings(getattr(args, "command", None) or "evaluate")
        results = evaluate_geo(scenario, geo_policy_spec(names, args.checkpoint), seeds, workers=args.workers,
                               out=out, progress=not args.quiet)
    print(format_geo_table(results))
    print(f"\nwrote {out / 'results.json'}")
    for p in [] if args.no_plots else write_geo_plots(results, out):
        print(f"wrote {p}")
    return results


def run(args: argparse.Namespace) -> int:
    if args.list_policies and is_geo_scenario(args.scenario):
        from tapfinger.evaluation.geo_harness import geo_policy_names

        print("\n".join(geo_policy_names()))
        return 0
    if args.list_policies:
        from agents.registry import policy_names

        print("\n".join(policy_names()))
        return 0
    evaluate_and_report(args, Path(args.out))
    return 0
