"""What faults cost and what checkpoints buy (issue 15, items 4 and 5): JCT and makespan with and
without faults on the same seeds, greedy's JCT against the checkpoint interval, and the policies at
scaled fault rates.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/fault_study.py --seeds 20 --workers 2 \\
        [--checkpoint-intervals 0 15 30 60 120] [--fault-scales 0.5 1 2]

Every arm runs through the evaluation harness (`tapfinger.evaluation.harness`: the JCT and makespan
`tapfinger evaluate` reports) on the same seeds, so the arrivals of a seed are the same in every arm
and, with faults on, so are its fault events (common random numbers): differences are paired per
seed. The default scenario is `edge-faulty`; any scenario with a `[faults]` table works, and one
without gets a fault model from `--mtbf` (and `--repair`).

(a) always: each policy with faults off (`Faults()`) and on; avg JCT and makespan with 95% CIs and
    the paired difference on - off, with the work lost and the restarts of the faulty arm.
(b) `--checkpoint-intervals S ...`: one policy (`--checkpoint-policy`, default greedy) with a
    checkpoint every S seconds of running (0 = never: a failure loses all the progress), each
    costing `--checkpoint-cost` seconds (default: the scenario's); a table and OUT/checkpoint_interval.png.
(c) `--fault-scales X ...`: the policies at X times the scenario's fault rates (every mean time
    between failures, slowdowns and departures divided by X; repair, slowdown and absence
    durations unchanged).

Finished episodes are kept in OUT/episodes.partial.jsonl (one file for every arm): after Ctrl-C the
same command runs only the missing ones; the file is removed when the study completes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

POLICIES = ["greedy", "sjf", "fifo", "optimus"]


def with_faults(scenario, label: str, **changes):
    """`scenario` with its fault model changed; renamed after `label` (so progress bars and caches
    tell the arms apart) unless nothing changed, so that an arm equal to the base reuses its episodes."""
    faults = dataclasses.replace(scenario.faults, **changes)
    if faults == scenario.faults:
        return scenario
    return dataclasses.replace(scenario, name=f"{scenario.name}[{label}]", faults=faults)


def faults_off(scenario):
    """The same scenario without any fault (and so without checkpoints or their cost)."""
    from tapfinger.sim.tier_settings import Faults

    return dataclasses.replace(scenario, name=f"{scenario.name}[faults off]", faults=Faults())


def scaled(scenario, scale: float):
    """The scenario at `scale` times its fault rates (`tapfinger.sim.faults.fault_scaled`), renamed."""
    from tapfinger.sim.faults import fault_scaled

    if not scale > 0:
        raise ValueError(f"--fault-scales {scale:g}: a scale must be > 0 (faults off is arm (a)'s baseline)")
    faster = fault_scaled(scenario, scale)
    return faster if faster is scenario else dataclasses.replace(faster, name=f"{scenario.name}[faults x{scale:g}]")


def with_checkpoints(scenario, interval: float, cost: float):
    if interval < 0 or cost < 0:
        raise ValueError(f"checkpoint interval {interval:g} s, cost {cost:g} s: both must be >= 0 "
                         f"(interval 0 = never checkpoint)")
    return with_faults(scenario, f"checkpoint {interval:g}s cost {cost:g}s", checkpoint_seconds=float(interval),
                       checkpoint_cost_seconds=float(cost))


def build_scenario(args: argparse.Namespace):
    """The faulty base scenario of the study, from --scenario, --mtbf, --repair and --tasks."""
    from tapfinger.sim.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    if args.tasks is not None:
        scenario = dataclasses.replace(scenario, arrivals=dataclasses.replace(scenario.arrivals, tasks=args.tasks))
    if args.mtbf is not None:
        repair = args.repair if args.repair is not None else (scenario.faults.repair_seconds or 120.0)
        scenario = dataclasses.replace(scenario, faults=dataclasses.replace(
            scenario.faults, mtbf_seconds=args.mtbf, repair_seconds=repair))
    elif args.repair is not None:
        scenario = dataclasses.replace(scenario, faults=dataclasses.replace(scenario.faults, repair_seconds=args.repair))
    if not scenario.faults.active:
        raise ValueError(f"scenario {args.scenario} has no fault model ([faults] table), so faults on = faults off. "
                         f"Fix: pass --mtbf SECONDS (e.g. --mtbf 1200), or use --scenario edge-faulty")
    return scenario


@dataclasses.dataclass
class Study:
    """Where the study's evaluations run: seeds, workers, the shared episode cache."""

    seeds: list[int]
    workers: int = 1
    cache: object = None  # an EpisodeCache, or None
    progress: bool = True
    # per policy its constructor options, resolved once on the base scenario (a learned policy's
    # checkpoint: the arms are renamed, and no checkpoint ships under an arm's name)
    options: dict = dataclasses.field(default_factory=dict)

    def run(self, scenario, names: list[str]) -> dict:
        from tapfinger.evaluation.harness import EvalConfig, run_evaluation

        return run_evaluation(EvalConfig(scenario, list(names), self.seeds, workers=self.workers,
                                         progress=self.progress, cache=self.cache,
                                         policy_options={n: self.options.get(n, {}) for n in names}))


def per_seed(results: dict, name: str, key: str) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in results["policies"][name][key]["per_seed"]], dtype=float)


def _ci(values) -> dict:
    from tapfinger.evaluation.metrics import mean_ci

    m, lo, hi = mean_ci(values)
    return {"mean": m, "ci95": [lo, hi]}


def _cell(s: dict, digits: int = 2, sign: str = "") -> str:
    return f"{s['mean']:{sign}.{digits}f} [{s['ci95'][0]:{sign}.{digits}f}, {s['ci95'][1]:{sign}.{digits}f}]"


def on_off(study: Study, scenario, names: list[str]) -> dict:
    """(a): per policy, avg JCT and makespan off, on and on - off (paired per seed)."""
    off, on = study.run(faults_off(scenario), names), study.run(scenario, names)
    out = {}
    for n in names:
        row = {}
        for key in ("avg_jct", "makespan"):
            a, b = per_seed(off, n, key), per_seed(on, n, key)
            row[key] = {"off": _ci(a), "on": _ci(b), "diff": _ci(b - a)}
        row["lost_work"], row["restarts"] = _ci(per_seed(on, n, "lost_work")), _ci(per_seed(on, n, "restarts"))
        row["recovery"] = _ci(per_seed(on, n, "recovery"))
        out[n] = row
    return out


def print_on_off(scenario, seeds: list[int], rows: dict) -> None:
    print(f"(a) {scenario.name}, seeds {seeds[0]}..{seeds[-1]}: faults off vs on, same seeds; mean [95% CI]; "
          f"JCT and makespan in slots")
    print(f"  {'policy':<9} {'avg JCT off':<22} {'avg JCT on':<22} {'on - off':<24} {'makespan off':<22} "
          f"{'makespan on':<22} {'on - off':<24} {'lost work':>9} {'restarts':>8} {'recovery':>8}")
    for n, r in rows.items():
        j, m = r["avg_jct"], r["makespan"]
        print(f"  {n:<9} {_cell(j['off']):<22} {_cell(j['on']):<22} {_cell(j['diff'], sign='+'):<24} "
              f"{_cell(m['off'], 1):<22} {_cell(m['on'], 1):<22} {_cell(m['diff'], 1, '+'):<24} "
              f"{r['lost_work']['mean']:>9.2f} {r['restarts']['mean']:>8.1f} {r['recovery']['mean']:>8.2f}")


def checkpoint_study(study: Study, scenario, intervals: list[float], cost: float, policy: str) -> list[dict]:
    """(b): `policy`'s avg JCT (and work lost) at each checkpoint interval, faults as in `scenario`."""
    rows, jct = [], {}
    for s in intervals:
        res = study.run(with_checkpoints(scenario, s, cost), [policy])
        jct[s] = per_seed(res, policy, "avg_jct")
        rows.append({"interval_seconds": float(s), "cost_seconds": float(cost), "avg_jct": _ci(jct[s]),
                     "lost_work": _ci(per_seed(res, policy, "lost_work"))})
    if 0 in jct:  # paired per seed against never checkpointing: what checkpoints buy
        for s, r in zip(intervals, rows):
            r["diff_vs_never"] = _ci(jct[s] - jct[0])
    return rows


def print_checkpoints(scenario, policy: str, rows: list[dict]) -> None:
    print(f"(b) {scenario.name}: {policy}'s avg JCT vs checkpoint interval (0 = never), "
          f"each checkpoint costing {rows[0]['cost_seconds']:g} s")
    print(f"  {'interval s':>10} {'avg JCT (95% CI)':<22} {'lost work':>9}  {'minus never (paired)' if 'diff_vs_never' in rows[0] else ''}")
    for r in rows:
        diff = _cell(r["diff_vs_never"], sign="+") if "diff_vs_never" in r else ""
        print(f"  {r['interval_seconds']:>10g} {_cell(r['avg_jct']):<22} {r['lost_work']['mean']:>9.2f}  {diff}")


def plot_checkpoints(scenario, policy: str, rows: list[dict], path: Path, faults_off: dict | None = None) -> Path:
    """avg JCT (95% CI) against the interval; "never" (interval 0) and, if given, the faults-off
    JCT as horizontal lines: neither is a point of the interval axis."""
    import matplotlib

    matplotlib.use("Agg")  # a file, no screen
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    some = [r for r in rows if r["interval_seconds"] > 0]
    if some:
        m = np.array([r["avg_jct"]["mean"] for r in some])
        err = np.array([[mi - r["avg_jct"]["ci95"][0], r["avg_jct"]["ci95"][1] - mi] for mi, r in zip(m, some)]).T
        ax.errorbar([r["interval_seconds"] for r in some], m, yerr=err, marker="o", capsize=4, label="checkpoint every S s")
    for r in rows:
        if r["interval_seconds"] == 0:
            lo, hi = r["avg_jct"]["ci95"]
            ax.axhline(r["avg_jct"]["mean"], color="tab:red", ls="--", lw=1, label="never checkpoint")
            ax.axhspan(lo, hi, color="tab:red", alpha=0.1)
    if faults_off is not None:
        ax.axhline(faults_off["mean"], color="k", ls=":", lw=1, label="no faults")
    ax.set_xlabel("checkpoint interval S (seconds of running)")
    ax.set_ylabel(f"{policy} average JCT (slots), 95% CI")
    ax.set_title(f"{scenario.name}: each checkpoint costs {rows[0]['cost_seconds']:g} s")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def scale_study(study: Study, scenario, scales: list[float], names: list[str]) -> list[dict]:
    """(c): every policy's avg JCT, work lost and restarts at each fault-rate scale."""
    rows = []
    for x in scales:
        res = study.run(scaled(scenario, x), names)
        rows.append({"scale": float(x), "policies": {n: {k: _ci(per_seed(res, n, k)) for k in
                                                         ("avg_jct", "makespan", "lost_work", "restarts")}
                                                     for n in names}})
    return rows


def print_scales(scenario, rows: list[dict]) -> None:
    print(f"(c) {scenario.name} at scaled fault rates (x = rate multiplier): avg JCT [95% CI], lost work, restarts")
    for r in rows:
        for n, p in r["policies"].items():
            print(f"  x{r['scale']:<5g} {n:<9} {_cell(p['avg_jct']):<22} {p['lost_work']['mean']:>7.2f} "
                  f"{p['restarts']['mean']:>6.1f}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", default="edge-faulty", help="built-in name or TOML file (default: edge-faulty)")
    p.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated (default: {','.join(POLICIES)})")
    p.add_argument("--mtbf", type=float, default=None, help="mean seconds between failures per node (default: the "
                                                             "scenario's; needed for a scenario without faults)")
    p.add_argument("--repair", type=float, default=None, help="mean repair seconds (default: the scenario's, or 120)")
    p.add_argument("--tasks", type=int, default=None, help="tasks per episode (default: the scenario's)")
    p.add_argument("--checkpoint-intervals", type=float, nargs="+", default=None, metavar="S",
                   help="run study (b) at these checkpoint intervals in seconds (0 = never), e.g. 0 15 30 60 120")
    p.add_argument("--checkpoint-cost", type=float, default=None,
                   help="seconds per checkpoint in study (b) (default: the scenario's checkpoint_cost_seconds)")
    p.add_argument("--checkpoint-policy", default="greedy", help="the policy of study (b) (default: greedy)")
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint of a learned policy in --policies (default: the one shipped for --scenario)")
    p.add_argument("--fault-scales", type=float, nargs="+", default=None, metavar="X",
                   help="run study (c) at these multiples of the fault rates, e.g. 0.5 1 2")
    p.add_argument("--seeds", type=int, default=20, help="number of seeds (default: 20)")
    p.add_argument("--seed-start", type=int, default=1000, help="first seed (default: 1000)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default: 2)")
    p.add_argument("--out", default="results/fault-study", help="folder for the plot, fault_study.json and the "
                                                                 "episode cache (default: results/fault-study)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every flag checked before any episode runs (argparse errors: usage, the problem, exit 2)."""
    if args.seeds < 2:
        p.error(f"--seeds {args.seeds}: at least 2 are needed (a confidence interval needs two seeds)")
    if args.seed_start < 0:
        p.error(f"--seed-start {args.seed_start}: seeds must be >= 0")
    if args.workers < 1:
        p.error(f"--workers {args.workers}: at least 1 is needed")
    if args.tasks is not None and args.tasks < 1:
        p.error(f"--tasks {args.tasks}: at least 1 task is needed")
    for flag, v in (("--mtbf", args.mtbf), ("--repair", args.repair)):
        if v is not None and not (np.isfinite(v) and v > 0):
            p.error(f"{flag} {v:g}: must be a number of seconds > 0")
    if args.checkpoint_cost is not None and not (np.isfinite(args.checkpoint_cost) and args.checkpoint_cost >= 0):
        p.error(f"--checkpoint-cost {args.checkpoint_cost:g}: must be >= 0 seconds")
    bad = [s for s in args.checkpoint_intervals or () if not (np.isfinite(s) and s >= 0)]
    if bad:
        p.error(f"--checkpoint-intervals {bad[0]:g}: intervals are seconds >= 0 (0 = never checkpoint)")
    bad = [x for x in args.fault_scales or () if not (np.isfinite(x) and x > 0)]
    if bad:
        p.error(f"--fault-scales {bad[0]:g}: scales must be > 0 (the faults-off baseline is always run)")
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    if not names or len(set(names)) != len(names):
        p.error(f"--policies {args.policies!r}: name at least one policy, each once, e.g. greedy,sjf")
    args.policy_names = names


def run_study(args: argparse.Namespace, scenario, study: Study, out: Path) -> dict:
    """Every requested part, printed as it completes; what was measured, for fault_study.json."""
    names = args.policy_names
    found = {"scenario": scenario.name, "seeds": study.seeds, "on_off": on_off(study, scenario, names)}
    print_on_off(scenario, study.seeds, found["on_off"])
    if args.checkpoint_intervals:
        cost = scenario.faults.checkpoint_cost_seconds if args.checkpoint_cost is None else args.checkpoint_cost
        rows = checkpoint_study(study, scenario, args.checkpoint_intervals, cost, args.checkpoint_policy)
        print_checkpoints(scenario, args.checkpoint_policy, rows)
        off = found["on_off"].get(args.checkpoint_policy, {}).get("avg_jct", {}).get("off")
        path = plot_checkpoints(scenario, args.checkpoint_policy, rows, out / "checkpoint_interval.png", off)
        print(f"wrote {path}")
        found["checkpoint_intervals"] = rows
    if args.fault_scales:
        found["fault_scales"] = scale_study(study, scenario, args.fault_scales, names)
        print_scales(scenario, found["fault_scales"])
    return found


def _finite(value):
    """`value` with NaN (nothing to measure: e.g. no task hit, so no recovery time) as None: strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return int(value) if isinstance(value, np.integer) else value


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from agents.registry import policy_class, policy_options
    from tapfinger.evaluation.episode_cache import CACHE_NAME, EpisodeCache

    out = Path(args.out)
    try:
        scenario = build_scenario(args)
        for n in {*args.policy_names, args.checkpoint_policy}:
            policy_class(n)  # an unknown name: a ValueError naming the known ones
        options = {n: policy_options(n, scenario, checkpoint=args.checkpoint)
                   for n in {*args.policy_names, args.checkpoint_policy}}
        if args.fault_scales:
            scaled(scenario, args.fault_scales[0])  # an event file has no rate to scale
        out.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as exc:  # ScenarioError is a ValueError
        print(f"fault_study.py: error: {exc}", file=sys.stderr)
        return 2
    cache = EpisodeCache(out / CACHE_NAME)
    study = Study(list(range(args.seed_start, args.seed_start + args.seeds)), args.workers, cache, not args.quiet,
                  options)
    try:
        found = run_study(args, scenario, study, out)
    except KeyboardInterrupt as exc:  # the harness terminated its workers; finished episodes are cached
        said = f": {exc.args[0]}" if exc.args else ""
        print(f"fault_study.py: interrupted{said}", file=sys.stderr)
        return 130
    (out / "fault_study.json").write_text(json.dumps(_finite(found), indent=2, allow_nan=False))
    print(f"wrote {out / 'fault_study.json'}")
    cache.remove()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # numpy per worker: the cores are shared
    sys.exit(main())
