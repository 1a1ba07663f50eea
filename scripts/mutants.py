"""The mutants of `scripts/mutation_check.py`: AST-level small bugs planted one at a time.

Operators (docs/mutation-testing.md): comparison swaps, arithmetic and bitwise swaps, number
changes, slice-bound offsets, and/or, `not` removed, True/False, min/max and friends, and a
statement replaced by `pass`. f-strings, `raise` statements and annotations are never mutated.
"""

from __future__ import annotations

import ast
import copy
import random
from dataclasses import dataclass, field


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
