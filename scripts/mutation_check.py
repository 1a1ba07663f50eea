#!/usr/bin/env python
"""Mutation check of the core modules: how many small deliberate bugs do the tests catch?

Each mutant is one small change to one source file (a comparison, an arithmetic or boolean
operator, a numeric constant, True/False, a `not`, a slice bound, min/max or any/all swapped, or a
`+=`/`-=` or call statement removed). For every mutant the tests that cover that file (`MODULES`
below) run against it; a failing (or timed-out) run *kills* the mutant, a passing run lets it
*survive*. Survivors are either
equivalent mutants (the change cannot alter behaviour: triage them by hand) or a gap in the tests.

Not part of CI (minutes to an hour or more): run it before a release, and after adding tests for
one of these modules. From the repository root:

    .venv/bin/python scripts/mutation_check.py --list                 # mutants per module, runs nothing
    .venv/bin/python scripts/mutation_check.py --sample 20 --seed 0   # 20 random mutants per module
    .venv/bin/python scripts/mutation_check.py --modules masks,conflicts   # every mutant of two modules
    .venv/bin/python scripts/mutation_check.py --sample 20 --json /tmp/mutation.json
    .venv/bin/python scripts/mutation_check.py --rev HEAD~1 --sample 20    # a committed revision
    .venv/bin/python scripts/mutation_check.py --source /tmp/other-tree    # another checkout

Nothing is changed in the tree measured: its files (tracked and untracked-but-not-ignored ones, or a
`git archive` of `--rev`) are copied to a temporary directory per worker, and pytest runs there with
PYTHONPATH pointing at the copy, so the copy's packages win over the editable install. Ctrl-C stops
at once and reports the mutants finished so far. The same `--seed` and `--sample` pick the same
mutants as long as the module's source is unchanged, so "before" and "after" a test change compare
like with like. See docs/mutation-testing.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict
from pathlib import Path

from mutants import Mutant, generate_mutants, sample_mutants  # scripts/mutants.py (this folder is on sys.path)

# ================================================================================================
# MODULES: the one place to update when files move or tests are added.
# Key: a source file relative to the repository root, optionally followed by "::name,name" to mutate
# only those top-level functions or classes. Value: the tests that cover it, as pytest arguments
# (files, globs, or file::test node ids), the fastest and most targeted first: pytest stops at the
# first failure. Entries missing from the tree measured are left out (with a note), so the list may
# name tests that exist only in newer trees.
# ================================================================================================
MODULES: dict[str, list[str]] = {
    "tapfinger/sim/engine.py": [
        "tests/test_engine_semantics.py", "tests/test_env_step.py", "tests/test_env_properties.py",
        "tests/test_heuristics_np.py", "tests/test_paper_baselines.py", "tests/test_optimal.py"],
    "tapfinger/sim/progress.py": [
        "tests/test_engine_semantics.py", "tests/test_bounds.py", "tests/test_heuristics_np.py"],
    "tapfinger/sim/speed.py": ["tests/test_bounds.py", "tests/test_heuristics_np.py", "tests/test_optimal.py"],
    "tapfinger/evaluation/metrics.py": ["tests/test_metrics.py", "tests/test_evaluation.py"],
    "tapfinger/evaluation/bounds.py": ["tests/test_bounds.py", "tests/test_optimal.py", "tests/test_evaluation.py"],
    "agents/learned/conflicts.py": [
        "tests/test_conflicts.py",
        "tests/test_learned.py::test_conflict_winner_by_bayes_posterior_and_by_score",
        "tests/test_learned.py::test_fit_count_counts_minimum_per_node",
        "tests/test_learned.py::test_loser_allocation_log_probability_left_out"],
    "agents/learned/masks.py": [
        "tests/test_masks.py", "tests/test_learned.py::test_sampled_actions_respect_masks_over_an_episode"],
    "agents/heuristics/greedy.py": [
        "tests/test_heuristics_np.py", "tests/test_paper_baselines.py", "tests/test_optimal.py",
        "tests/test_evaluation.py"],
    "agents/learned/checkpoint.py": [
        "tests/test_checkpoint*.py",
        "tests/test_learned.py::test_checkpoint_refusals",
        "tests/test_learned.py::test_resume_with_other_model_flags_is_refused",
        "tests/test_learned.py::test_resume_gives_identical_parameters",
        "tests/test_export.py::test_fingerprint_without_torch_equals_the_checkpoint_one"],
    "tapfinger/evaluation/harness.py::summarise": ["tests/test_metrics.py", "tests/test_evaluation.py"],
    "tapfinger/sim/scenario.py::scenario_fingerprint": [
        "tests/test_checkpoints.py", "tests/test_scenarios.py", "tests/test_learned.py::test_checkpoint_refusals",
        "tests/test_export.py::test_fingerprint_without_torch_equals_the_checkpoint_one"],
}

# Stop at the first failure, no .pytest_cache. No "-q": pyproject's addopts has one already, and a
# second one hides the closing counts that the report keeps for each mutant.
PYTEST_ARGS = ["-x", "-p", "no:cacheprovider"]
# Left out when a tree is copied without git (e.g. an unpacked `git archive`).
COPY_SKIP = {".git", ".venv", "venv", "__pycache__", ".hypothesis", ".pytest_cache", "mutants", "results",
             "build", "dist", "node_modules"}

# ---------------------------------------------------------------------------------- workspaces
def _listed_files(src: Path) -> list[str] | None:
    """Tracked and untracked-but-not-ignored files when `src` is the top of a git work tree."""
    try:
        top = subprocess.run(["git", "-C", str(src), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        if Path(top).resolve() != src.resolve():
            return None
        out = subprocess.run(["git", "-C", str(src), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return [p for p in out.decode().split("\0") if p and (src / p).is_file()]


def make_copy(src: Path, rev: str | None, dest: Path) -> None:
    """Copy the tree to measure into `dest` (never touching `src`)."""
    dest.mkdir(parents=True)
    if rev is not None:
        data = subprocess.run(["git", "-C", str(src), "archive", rev], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            try:
                tar.extractall(dest, filter="data")
            except TypeError:  # Python before 3.11.4: no extraction filters
                tar.extractall(dest)
        return
    files = _listed_files(src)
    if files is None:  # not a git work tree: everything but caches and environments
        files = [str(p.relative_to(src)) for p in src.rglob("*") if p.is_file()
                 and not COPY_SKIP.intersection(p.relative_to(src).parts)
                 and not any(part.endswith(".egg-info") for part in p.parts)]
    for rel in files:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dest / rel)


def resolve_tests(root: Path, specs: list[str]) -> tuple[list[str], list[str]]:
    """(pytest arguments that exist in the tree at `root`, specs left out)."""
    found, missing = [], []
    for spec in specs:
        file, sep, test = spec.partition("::")
        paths = sorted(str(p.relative_to(root)) for p in root.glob(file)) if any(c in file for c in "*?[") else (
            [file] if (root / file).is_file() else [])
        if sep:
            base = test.split("[")[0].split("::")[-1]
            paths = [f"{p}::{test}" for p in paths
                     if re.search(rf"^\s*def {re.escape(base)}\b", (root / p).read_text(), re.M)]
        found += [p for p in paths if p not in found]
        if not paths:
            missing.append(spec)
    return found, missing


def test_env(root: Path, source: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # a same-size mutant written in the same second must not reuse a .pyc
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, "1")
    if not env.get("TAPFINGER_SHARED_DATA"):  # `shared:` data is found beside the repository, not the copy
        here = Path(__file__).resolve().parents[1]  # this repository, when --source is another tree
        for cand in (source.resolve().parent / "shared" / "data", here.parent / "shared" / "data"):
            if cand.is_dir():
                env["TAPFINGER_SHARED_DATA"] = str(cand)
                break
    return env


# ---------------------------------------------------------------------------------- running
class Runner:
    """Runs pytest in the workspaces, one process group per run, all killable at once."""

    def __init__(self, workspaces: list[Path], source: Path):
        self.free: queue.Queue[Path] = queue.Queue()
        for w in workspaces:
            self.free.put(w)
        self.env = {w: test_env(w, source) for w in workspaces}
        self.active: set[subprocess.Popen] = set()
        self.lock = threading.Lock()
        self.stopping = False

    def pytest(self, root: Path, tests: list[str], timeout: float | None) -> tuple[int | None, str, float]:
        """(exit code or None on timeout, output tail, seconds)."""
        t0 = time.monotonic()
        with self.lock:
            if self.stopping:
                return -1, "stopped", 0.0
            proc = subprocess.Popen([sys.executable, "-m", "pytest", *PYTEST_ARGS, *tests], cwd=root,
                                    env=self.env[root], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            self.active.add(proc)
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc: int | None = proc.returncode
        except subprocess.TimeoutExpired:
            _kill(proc)
            out, _ = proc.communicate()
            rc = None
        finally:
            with self.lock:
                self.active.discard(proc)
        shutil.rmtree(root / ".hypothesis", ignore_errors=True)  # no replay of one mutant's failures into the next
        return rc, out.decode(errors="replace")[-3000:], time.monotonic() - t0

    def run_mutant(self, m: Mutant, tests: list[str], timeout: float) -> Mutant:
        root = self.free.get()
        path = root / m.path
        original = path.read_bytes()
        try:
            path.write_bytes(m.apply(original))
            rc, tail, m.seconds = self.pytest(root, tests, timeout)
            m.outcome = _outcome(tail)
        finally:
            path.write_bytes(original)
            self.free.put(root)
        m.status = ("timeout" if rc is None else "survived" if rc == 0 else "stopped" if self.stopping
                    else "error" if rc in (4, 5) else "killed")  # 4/5: usage error / no tests collected
        return m

    def stop(self) -> None:
        with self.lock:
            self.stopping = True
            for proc in list(self.active):
                _kill(proc)


def _outcome(tail: str) -> str:
    """pytest's closing counts ("1 failed, 12 passed in 3.1s"), else its last line."""
    lines = [ln.strip("= ") for ln in tail.strip().splitlines()] or [""]
    counts = [ln for ln in lines if re.search(r"\d+ (passed|failed|errors?|deselected)\b|no tests ran", ln)]
    return (counts or lines)[-1]


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def check_baselines(runner: Runner, root: Path, plans: dict[str, dict]) -> None:
    """Run each module's tests once on the unmutated copy: they must pass (and the copy's packages
    must be the ones imported), else that module's mutants would be 'killed' for nothing."""
    probe = subprocess.run([sys.executable, "-c", "import tapfinger, agents, envs; print(tapfinger.__file__, "
                            "agents.__file__, envs.__file__)"], cwd=root, env=runner.env[root],
                           capture_output=True, text=True)
    if probe.returncode != 0 or any(not Path(p).resolve().is_relative_to(root.resolve()) for p in probe.stdout.split()):
        raise SystemExit("mutation_check: the copy's packages are not the ones imported:\n"
                         f"{probe.stdout}{probe.stderr}")
    seen: dict[tuple[str, ...], tuple[int | None, str, float]] = {}
    for module, plan in plans.items():
        key = tuple(plan["tests"])
        if key not in seen:
            print(f"baseline: {' '.join(key)}", file=sys.stderr, flush=True)
            seen[key] = runner.pytest(root, list(key), None)
        rc, tail, seconds = seen[key]
        plan["baseline_s"] = round(seconds, 1)
        if rc != 0:
            plan["skipped"] = f"tests fail on the unmutated tree (exit {rc})"
            print(f"mutation_check: {module}: {plan['skipped']}; its mutants are not run:\n{tail}", file=sys.stderr)


def run_all(runner: Runner, plans: dict[str, dict], workers: int, timeout: float | None) -> bool:
    """Run every planned mutant; returns False when interrupted (finished mutants keep their status)."""
    from tqdm import tqdm

    jobs = [(m, p) for p in plans.values() if not p.get("skipped") for m in p["mutants"]]
    counts = {"killed": 0, "survived": 0}
    bar = tqdm(total=len(jobs), unit="mutant", dynamic_ncols=True)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        futures = [pool.submit(runner.run_mutant, m, p["tests"], timeout or 3 * p["baseline_s"] + 30)
                   for m, p in jobs]
        for fut in as_completed(futures):
            m = fut.result()
            key = "survived" if m.status == "survived" else "killed" if m.status in ("killed", "timeout") else None
            if key:
                counts[key] += 1
            bar.update()
            bar.set_postfix(counts)
        return True
    except KeyboardInterrupt:
        runner.stop()
        print("\ninterrupted: reporting the mutants finished so far", file=sys.stderr)
        return False
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()


# ---------------------------------------------------------------------------------- report
def module_stats(plan: dict) -> dict:
    done = [m for m in plan["mutants"] if m.status in ("killed", "timeout", "survived")]
    killed = sum(m.status in ("killed", "timeout") for m in done)
    return {"run": len(done), "killed": killed, "timeout": sum(m.status == "timeout" for m in done),
            "survived": len(done) - killed, "errors": sum(m.status == "error" for m in plan["mutants"]),
            "kill_rate": round(killed / len(done), 4) if done else None}


def report(plans: dict[str, dict]) -> str:
    head = f"{'module':<46} {'total':>5} {'run':>4} {'killed':>6} {'(timeout)':>9} {'survived':>8} {'kill rate':>9}"
    lines = [head, "-" * len(head)]
    tot = {"run": 0, "killed": 0, "timeout": 0, "survived": 0}
    for module, plan in plans.items():
        s = module_stats(plan)
        for k in tot:
            tot[k] += s[k]
        rate = "-" if s["kill_rate"] is None else f"{100 * s['kill_rate']:.1f}%"
        note = f"  ({plan['skipped']})" if plan.get("skipped") else f"  ({s['errors']} errors)" if s["errors"] else ""
        lines.append(f"{module:<46} {plan['total']:>5} {s['run']:>4} {s['killed']:>6} {s['timeout']:>9} "
                     f"{s['survived']:>8} {rate:>9}{note}")
    rate = f"{100 * tot['killed'] / tot['run']:.1f}%" if tot["run"] else "-"
    lines.append(f"{'all':<46} {'':>5} {tot['run']:>4} {tot['killed']:>6} {tot['timeout']:>9} "
                 f"{tot['survived']:>8} {rate:>9}")
    survivors = [m for p in plans.values() for m in p["mutants"] if m.status == "survived"]
    if survivors:
        lines += ["", "survivors (triage each: equivalent mutant, or a test to add):"]
        lines += [f"  {m.describe()}" for m in survivors]
    return "\n".join(lines)


def to_json(plans: dict[str, dict], args: argparse.Namespace, finished: bool) -> dict:
    return {"source": str(args.source), "rev": args.rev, "seed": args.seed, "sample": args.sample,
            "finished": finished, "modules": {
                k: {"tests": p["tests"], "tests_left_out": p["missing"], "total": p["total"],
                    "baseline_s": p.get("baseline_s"), "skipped": p.get("skipped"), **module_stats(p),
                    "mutants": [{k2: v for k2, v in asdict(m).items() if k2 not in ("start", "end", "module")}
                                for m in p["mutants"] if m.status]}
                for k, p in plans.items()}}


# ---------------------------------------------------------------------------------- main
def select_modules(spec: str | None) -> list[str]:
    if not spec:
        return list(MODULES)
    wanted = [w.strip() for w in spec.split(",") if w.strip()]
    chosen = [k for k in MODULES if any(w == Path(k.split("::")[0]).stem or w in k for w in wanted)]
    if not chosen:
        raise SystemExit(f"mutation_check: no module matches {spec!r}; known: {', '.join(MODULES)}")
    return chosen


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=Path(__file__).resolve().parents[1],
                    help="tree to measure (default: this repository's work tree)")
    ap.add_argument("--rev", help="measure this git revision of --source instead of its work tree")
    ap.add_argument("--modules", help="comma-separated file stems or parts of MODULES keys (default: all)")
    ap.add_argument("--sample", type=int, help="at most this many random mutants per module (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    ap.add_argument("--workers", type=int, default=1, help="mutants run at once (default 1)")
    ap.add_argument("--timeout", type=float, help="seconds per mutant (default: 3 x the baseline run + 30)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    ap.add_argument("--list", action="store_true", help="count mutants per module and exit")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    modules = select_modules(args.modules)
    with tempfile.TemporaryDirectory(prefix="mutation-check-") as tmp:
        roots = [Path(tmp) / f"w{i}" for i in range(max(1, args.workers))]
        make_copy(args.source, args.rev, roots[0])
        for extra in roots[1:]:
            shutil.copytree(roots[0], extra)
        plans: dict[str, dict] = {}
        for module in modules:
            path = module.split("::")[0]
            if not (roots[0] / path).is_file():
                print(f"mutation_check: {path} is not in the tree measured; left out", file=sys.stderr)
                continue
            mutants = generate_mutants(module, (roots[0] / path).read_bytes())
            tests, missing = resolve_tests(roots[0], MODULES[module])
            plans[module] = {"total": len(mutants), "mutants": sample_mutants(mutants, args.sample, args.seed, module),
                             "tests": tests, "missing": missing}
            if missing:
                print(f"mutation_check: {module}: not in this tree, left out: {', '.join(missing)}", file=sys.stderr)
            if not tests:
                plans[module]["skipped"] = "no tests"
        if args.list:
            for module, plan in plans.items():
                print(f"{module:<46} {plan['total']:>5} mutants, {len(plan['mutants']):>5} selected; "
                      f"tests: {' '.join(plan['tests']) or '-'}")
            return 0
        runner = Runner(roots, args.source)
        finished = False
        try:
            check_baselines(runner, roots[0], {k: p for k, p in plans.items() if not p.get("skipped")})
            finished = run_all(runner, plans, args.workers, args.timeout)
        except KeyboardInterrupt:
            runner.stop()
            print("\ninterrupted", file=sys.stderr)
    print(report(plans))
    if args.json:
        args.json.write_text(json.dumps(to_json(plans, args, finished), indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if finished else 130


if __name__ == "__main__":
    sys.exit(main())
