"""The layers of docs/architecture.md, checked on the source: every import (lazy ones inside
functions included) points to the same layer or one below it, and the engine's round step has one
caller outside the engine."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Layer of each package prefix, lowest first (docs/architecture.md). A module may import its own
# layer and the layers below; `tapfinger` itself (the version) is importable from everywhere.
LAYERS = [
    ("tapfinger.sim", 0),
    ("tapfinger.testbed", 1),  # beside envs: imports only the simulator core
    ("envs", 1),
    ("agents", 2),
    ("tapfinger.evaluation", 3),
    ("tapfinger.cli", 4),
]
# Layers a layer may import besides its own and the simulator core.
ALLOWED = {
    "tapfinger.sim": set(),
    "tapfinger.testbed": set(),
    "envs": set(),
    "agents": {"envs"},
    "tapfinger.evaluation": {"envs", "agents"},
    "tapfinger.cli": {"envs", "agents", "tapfinger.evaluation", "tapfinger.testbed"},
}
OURS = ("tapfinger", "envs", "agents")


def layer_of(module: str) -> str | None:
    for prefix, _ in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            # the codebase uses absolute imports only, so that this check reads every import
            assert not node.level, f"{module}:{node.lineno}: relative import; write it absolute"
            out.append((node.lineno, node.module or ""))
    return out


def package_files() -> list[Path]:
    return sorted(p for pkg in OURS for p in (ROOT / pkg).rglob("*.py"))


def test_every_package_module_has_a_layer():
    assert package_files(), "no source files found"
    for path in package_files():
        name = module_name(path)
        if name == "tapfinger":
            continue
        assert layer_of(name) is not None, f"{name} belongs to no layer of docs/architecture.md"


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_downward(path: Path):
    name = module_name(path)
    own = layer_of(name)
    if own is None:
        return  # tapfinger/__init__.py: the version only
    tree = ast.parse(path.read_text(), filename=str(path))
    for lineno, target in imported_modules(tree, name):
        if target == "tapfinger" or target.split(".")[0] not in OURS:
            continue  # the version, or another library
        layer = layer_of(target)
        assert layer is not None, f"{path.name}:{lineno} imports {target}, which belongs to no layer"
        ok = layer == own or layer == "tapfinger.sim" or layer in ALLOWED[own]
        assert ok, (f"{path.relative_to(ROOT)}:{lineno} ({own}) imports {target} ({layer}): an upward or "
                    f"sideways import; see docs/architecture.md")


def test_the_checker_sees_an_upward_import(tmp_path):
    tree = ast.parse("def f():\n    from agents.registry import make_policy\n")
    assert imported_modules(tree, "envs.episode") == [(2, "agents.registry")]
    assert layer_of("agents.registry") == "agents" and "agents" not in ALLOWED["envs"]


def test_the_engine_round_step_has_one_caller_outside_the_engine():
    callers = []
    for path in package_files() + sorted((ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "play_round":
                callers.append(str(path.relative_to(ROOT)))
    outside = sorted(c for c in callers if c != "tapfinger/sim/engine.py")
    assert outside == ["envs/actions.py"], f"Engine.play_round called from {outside}"


def test_architecture_doc_names_every_layer():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for prefix, _ in LAYERS:
        assert prefix.replace(".", "/") + "/" in doc, f"docs/architecture.md does not describe {prefix}"
