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
import ast
import copy
import io
import json
import os
import queue
import random
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
from dataclasses import asdict, dataclass, field
from pathlib import Path

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

# ---------------------------------------------------------------------------------- mutants
COMPARE_SWAPS: dict[type, list[type]] = {
    ast.Lt: [ast.LtE, ast.GtE], ast.LtE: [ast.Lt, ast.Gt], ast.Gt: [ast.GtE, ast.LtE],
    ast.GtE: [ast.Gt, ast.Lt], ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq],
    ast.Is: [ast.IsNot], ast.IsNot: [ast.Is], ast.In: [ast.NotIn], ast.NotIn: [ast.In],
}
BINOP_SWAPS: dict[type, list[type]] = {
    ast.Add: [ast.Sub], ast.Sub: [ast.Add], ast.Mult: [ast.Div], ast.Div: [ast.Mult],
    ast.FloorDiv: [ast.Mult], ast.Mod: [ast.FloorDiv], ast.Pow: [ast.Mult],
    ast.BitAnd: [ast.BitOr], ast.BitOr: [ast.BitAnd], ast.BitXor: [ast.BitOr],
}
SYMBOLS = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
           ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+",
           ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
           ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.And: "and", ast.Or: "or"}
# Calls whose function is swapped (a name, or a method/attribute such as np.minimum or x.any).
CALL_SWAPS = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum", "any": "all",
              "all": "any", "argmin": "argmax", "argmax": "argmin", "floor": "ceil", "ceil": "floor"}
# Subtrees never mutated: f-strings, raise statements (messages), type annotations.
SKIP_NODES = (ast.JoinedStr, ast.Raise)
SKIP_FIELDS = {"annotation", "returns", "type_comment"}


@dataclass
class Mutant:
    module: str  # MODULES key
    path: str  # file relative to the root
    line: int
    operator: str  # e.g. "< -> <="
    original: str  # source text replaced
    mutated: str  # replacement text
    start: int = field(repr=False)  # byte offsets of the replaced text
    end: int = field(repr=False)
    status: str = ""  # killed | timeout | survived | error
    seconds: float = 0.0
    outcome: str = ""  # pytest's closing counts, e.g. "1 failed, 3 passed in 2.1s"
    before: str = ""  # the source line(s) changed, and the same after the mutation (for the report)
    after: str = ""

    def apply(self, source: bytes) -> bytes:
        return source[:self.start] + self.mutated.encode() + source[self.end:]

    def describe(self) -> str:
        return f"{self.path}:{self.line}: {self.before} -> {self.after}  [{self.operator}]"


def _around_change(before: str, after: str, width: int = 90) -> tuple[str, str]:
    """Both texts on one line, cut to a window that starts a little before their first difference."""
    before, after = " ".join(before.split()), " ".join(after.split())
    i = next((k for k, (a, b) in enumerate(zip(before, after)) if a != b), min(len(before), len(after)))
    lo = max(0, i - 30)
    cut = lambda t: ("..." if lo else "") + t[lo:lo + width] + ("..." if len(t) > lo + width else "")  # noqa: E731
    return cut(before), cut(after)


def _walk(node: ast.AST):
    """Every node under `node`, leaving out SKIP_NODES subtrees and annotations."""
    if isinstance(node, SKIP_NODES):
        return
    yield node
    for name, value in ast.iter_fields(node):
        if name in SKIP_FIELDS:
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                yield from _walk(child)


def _with(node: ast.AST, **changes) -> ast.AST:
    new = copy.copy(node)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def _number_alternatives(value: int | float) -> list[int | float]:
    if value == 0:
        return [type(value)(1)]
    if value == 1:
        return [type(value)(0), type(value)(2)]
    return [value + 1, value - 1]


def _edits(node: ast.AST) -> list[tuple[ast.AST, str, str]]:
    """(node replaced, operator description, replacement source) for each mutation at this node."""
    paren = lambda n: f"({ast.unparse(n)})"  # noqa: E731 - parentheses keep precedence in any context
    out: list[tuple[ast.AST, str, str]] = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for alt in COMPARE_SWAPS.get(type(op), []):
                ops = list(node.ops)
                ops[i] = alt()
                out.append((node, f"{SYMBOLS[type(op)]} -> {SYMBOLS[alt]}", paren(_with(node, ops=ops))))
    elif isinstance(node, ast.BinOp):
        for alt in BINOP_SWAPS.get(type(node.op), []):
            out.append((node, f"{SYMBOLS[type(node.op)]} -> {SYMBOLS[alt]}", paren(_with(node, op=alt()))))
    elif isinstance(node, ast.BoolOp):
        alt = ast.Or if isinstance(node.op, ast.And) else ast.And
        out.append((node, f"{SYMBOLS[type(node.op)]} -> {SYMBOLS[alt]}", paren(_with(node, op=alt()))))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        out.append((node, "not removed", paren(node.operand)))
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        out.append((node, f"{node.value} -> {not node.value}", str(not node.value)))
    elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        for alt in _number_alternatives(node.value):
            out.append((node, f"{node.value!r} -> {alt!r}", f"({alt!r})"))
    elif isinstance(node, ast.Slice):
        for bound in (node.lower, node.upper):
            if bound is not None and not isinstance(bound, ast.Constant):  # constants: number mutants
                for sign in "+-":
                    out.append((bound, f"slice bound {sign}1", f"({ast.unparse(bound)} {sign} 1)"))
    elif isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)):
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr
        if name in CALL_SWAPS:
            new = CALL_SWAPS[name]
            out.append((f, f"{name}() -> {new}()", new if isinstance(f, ast.Name) else ast.unparse(_with(f, attr=new))))
    elif isinstance(node, ast.AugAssign):
        for alt in BINOP_SWAPS.get(type(node.op), []):
            out.append((node, f"{SYMBOLS[type(node.op)]}= -> {SYMBOLS[alt]}=", ast.unparse(_with(node, op=alt()))))
        out.append((node, f"{SYMBOLS.get(type(node.op), '?')}= removed", "pass"))
    elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        out.append((node, "call removed", "pass"))
    return out


def _roots(tree: ast.Module, names: list[str]) -> list[ast.AST]:
    if not names:
        return [tree]
    roots = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
             and n.name in names]
    missing = set(names) - {n.name for n in roots}
    if missing:
        raise SystemExit(f"mutation_check: {sorted(missing)} not found at the top level")
    return roots


def generate_mutants(module: str, source: bytes) -> list[Mutant]:
    """All valid mutants of one MODULES entry, in source order."""
    path, _, names = module.partition("::")
    tree = ast.parse(source)
    line_starts = [0]
    for line in source.splitlines(keepends=True):
        line_starts.append(line_starts[-1] + len(line))
    offset = lambda ln, col: line_starts[ln - 1] + col  # noqa: E731 - col_offset counts UTF-8 bytes
    original_dump = ast.dump(tree)
    mutants = []
    for root in _roots(tree, [n for n in names.split(",") if n]):
        for node in _walk(root):
            for target, operator, replacement in _edits(node):
                start = offset(target.lineno, target.col_offset)
                end = offset(target.end_lineno, target.end_col_offset)
                m = Mutant(module, path, target.lineno, operator, source[start:end].decode(), replacement, start, end)
                first, last = line_starts[target.lineno - 1], line_starts[target.end_lineno]
                after = source[first:start] + replacement.encode() + source[end:last]
                m.before, m.after = _around_change(source[first:last].decode(), after.decode())
                if _valid(m.apply(source), original_dump):
                    mutants.append(m)
    return mutants


def _valid(mutated: bytes, original_dump: str) -> bool:
    try:
        return ast.dump(ast.parse(mutated)) != original_dump
    except SyntaxError:
        return False


def sample_mutants(mutants: list[Mutant], n: int | None, seed: int, module: str) -> list[Mutant]:
    """A seeded sample per module (the seed string includes the module, so adding a module or
    changing one module's source leaves the other modules' samples alone)."""
    if n is None or n >= len(mutants):
        return mutants
    picked = random.Random(f"{seed}:{module}").sample(range(len(mutants)), n)
    return [mutants[i] for i in sorted(picked)]


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
