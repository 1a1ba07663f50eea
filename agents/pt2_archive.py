"""What a `.pt2` file must hold before torch is allowed to open it. Torch-free (json, zipfile,
pickletools, ast, numpy).

`torch.export.load` is not safe on an untrusted file ("uses pickle under the hood ... never load
data from an untrusted source", its documentation says), and pickle is not its only way to run
what a file says: in torch 2.13 it falls back to `torch.load(weights_only=False)` for the sample
inputs, unpickles weights and constants marked `use_pickle` and "opaque" objects, loads
AOTInductor shared libraries found in the archive, evaluates every symbolic shape `expr_str` with
`sympy.sympify` (which calls `eval`), `exec`s the `guards_code` strings as Python when the module
is built, and resolves each node's target by attribute lookup under `torch` (so that
`torch.os.system` is a valid target). `check_pt2_archive` accepts only the layout
`torch.export.save` writes for a program like ours, with each of those channels closed: no
pickled payload but the sample inputs, whose pickle may name only the tensor-rebuilding globals;
only aten operators and `getitem` as targets; expressions and guards made of a whitelisted
grammar; names that are identifiers. Whatever is not recognised is refused: this runtime only
needs to open files that `tapfinger export` wrote.

`read_pt2_metadata` reads the TapFinger metadata (an extra file in the archive) without loading
the program, and `count_nonfinite_weights` counts NaN/inf weights from the raw weight files.
"""

from __future__ import annotations

import ast
import io
import json
import pickletools
import re
import zipfile
from dataclasses import dataclass

import numpy as np

from agents.export_format import PT2_EXTRA_FILE, ExportedPolicyError


class UnsafeProgramError(ExportedPolicyError):
    """A .pt2 file holds something that could run code when torch loads it (or that is not ours)."""


IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Dotted attribute paths (parameter names; PyG's hetero convolutions name theirs `<src___rel___dst>`).
# They end up in generated code as `getattr(self, "segment")`, so no quote, and no dunder segment.
DOTTED = re.compile(r"(?!__)[A-Za-z0-9_<>]+(\.(?!__)[A-Za-z0-9_<>]+)*")
# Member paths below the archive's root folder (torch.export.save of one program named "model").
MEMBERS = re.compile(r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
                     r"|models/model\.json|data/weights/model_weights_config\.json|data/weights/weight_\d+"
                     r"|data/constants/model_constants_config\.json|data/constants/tensor_\d+"
                     r"|data/sample_inputs/model\.pt|extra/" + re.escape(PT2_EXTRA_FILE) + r")")
# torch.save's zip layout (the sample inputs), below its root folder.
SAVE_MEMBERS = re.compile(r"(data\.pkl|\.format_version|\.storage_alignment|byteorder|version"
                          r"|\.data/serialization_id|data/\d+)")
# The globals a pickle of plain tensors names (torch.save of tuples/dicts of CPU tensors).
PICKLE_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict")} | {
    ("torch", f"{t}Storage") for t in ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char",
                                       "Byte", "Bool")}
# Opcodes that build an object from a class or function other than through GLOBAL + REDUCE
# of an allowed global (or that look one up by number): never in torch.save's output.
PICKLE_REFUSED = {"INST", "OBJ", "STACK_GLOBAL", "EXT1", "EXT2", "EXT4", "PERSID"}
# Node targets: aten operators (a dunder name only for the aten bitwise operators), and getitem.
ATEN_TARGET = re.compile(r"torch\.ops\.aten\.(?P<op>[A-Za-z_][A-Za-z0-9_]*)\.[A-Za-z][A-Za-z0-9_]*")
ATEN_DUNDER = re.compile(r"__i?(and|or|xor|lshift|rshift)__")
OTHER_TARGETS = {"_operator.getitem"}
# Argument kinds of torch's serialisation schema that carry only data (not graphs, operators or
# script objects).
ARG_KINDS = {"as_none", "as_tensor", "as_tensors", "as_int", "as_ints", "as_float", "as_floats", "as_string",
             "as_strings", "as_sym_int", "as_sym_ints", "as_scalar_type", "as_memory_format", "as_layout",
             "as_device", "as_bool", "as_bools", "as_sym_bool", "as_sym_bools", "as_optional_tensors",
             "as_optional_tensor", "as_sym_float", "as_sym_floats", "as_int_lists", "as_float_lists",
             "as_expr", "as_name"}
# What a symbolic shape expression (sympy's srepr) and a guard may be made of.
# No powers: sympy evaluates them, and Pow(10, 10**18) would not finish.
SYMPY_CALLS = {"Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Max", "Min", "Abs", "Eq", "Ne", "Lt",
               "Le", "Gt", "Ge", "StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan", "Equality",
               "Unequality", "And", "Or", "Not", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod",
               "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "IntTrueDiv", "FloatTrueDiv", "TruncToInt", "RoundToInt", "ToFloat", "Identity"}
SYMPY_NAMES = {"oo", "zoo", "nan", "true", "false", "True", "False", "S"}
SYMBOL_NAME = re.compile(r"[a-z]{1,8}\d+")
EXPR_CHARS = re.compile(r"[A-Za-z0-9_\[\]'().,+\-*/%<>=!&| ]*")
OPS = (ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod, ast.Div, ast.USub, ast.UAdd, ast.Not, ast.And,
       ast.Or, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Load)


def _refuse(path, what: str) -> UnsafeProgramError:
    return UnsafeProgramError(
        f"exported policy {path} is refused without being loaded: {what}. Loading it could run code from the "
        f"file, and a file written by `tapfinger export` never holds that. Fix: use a file you exported "
        f"yourself (`tapfinger export --checkpoint CKPT --format pt2`), or the ONNX export, which holds no code.")


def _members(z: zipfile.ZipFile, pattern: re.Pattern, path, what: str) -> tuple[str, dict[str, bytes]]:
    """The archive's root folder and its members by relative name, each checked against `pattern`."""
    names = z.namelist()
    if len(set(names)) != len(names):  # two readers could pick different copies of a name
        raise _refuse(path, f"{what} holds two members of the same name")
    roots = {n.split("/", 1)[0] for n in names}
    if len(roots) != 1 or any("/" not in n for n in names):
        raise _refuse(path, f"{what} is not laid out under one root folder")
    if any(info.compress_type != zipfile.ZIP_STORED for info in z.infolist()):
        raise _refuse(path, f"{what} holds a compressed member (torch writes them stored)")
    root = roots.pop()
    out = {}
    for n in names:
        rel = n.split("/", 1)[1]
        if not pattern.fullmatch(rel):
            raise _refuse(path, f"{what} holds an unexpected member '{rel}'")
        out[rel] = z.read(n)
    return root, out


def read_pt2_metadata(data: bytes, path) -> dict | None:
    """The TapFinger metadata of a .pt2 archive (its extra file), read as JSON; nothing is loaded."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        hits = [n for n in z.namelist() if n.split("/", 1)[-1] == f"extra/{PT2_EXTRA_FILE}"]
        if len(hits) != 1:
            return None
        raw = z.read(hits[0])
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def check_pickle(data: bytes, path, member: str) -> None:
    """Refuse a pickle that names a global outside PICKLE_GLOBALS (the only way a pickle calls code)."""
    try:
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    except (ValueError, EOFError, KeyError) as exc:  # malformed: refuse rather than let a loader guess
        raise _refuse(path, f"the pickle {member} is malformed ({exc})") from None
    for name, arg in ops:
        if name in PICKLE_REFUSED:
            raise _refuse(path, f"the pickle {member} uses opcode {name}")
        if name == "GLOBAL" and tuple(str(arg).split(" ", 1)) not in PICKLE_GLOBALS:
            raise _refuse(path, f"the pickle {member} names the global {str(arg).replace(' ', '.')}")


def _repack(root: str, members: dict[str, bytes]) -> bytes:
    """A fresh zip of exactly the checked members: what torch reads is what was checked, however
    its zip reader and Python's might differ on a crafted archive."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for rel, raw in members.items():
            z.writestr(f"{root}/{rel}", raw)
    return out.getvalue()


def _check_sample_inputs(data: bytes, path) -> bytes:
    """The sample inputs (torch.save of tensors), checked and repacked."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise _refuse(path, "its sample inputs are not a torch.save zip archive") from None
    with z:
        root, members = _members(z, SAVE_MEMBERS, path, "its sample inputs")
    if "data.pkl" not in members:
        raise _refuse(path, "its sample inputs hold no data.pkl")
    check_pickle(members["data.pkl"], path, "data/sample_inputs/model.pt")
    return _repack(root, members)


def _payload_config(members: dict[str, bytes], name: str, prefix: str, path) -> dict:
    """A weights/constants config: every entry a raw tensor file (`use_pickle` false) of `prefix`."""
    try:
        config = json.loads(members[name])["config"]
    except (KeyError, ValueError, TypeError):
        raise _refuse(path, f"{name} is missing or not a payload config") from None
    if not isinstance(config, dict):
        raise _refuse(path, f"{name} is not a payload config")
    for fqn, entry in config.items():
        file = entry.get("path_name", "") if isinstance(entry, dict) else ""
        if not DOTTED.fullmatch(str(fqn)) or not re.fullmatch(re.escape(prefix) + r"\d+", str(file)):
            raise _refuse(path, f"{name} names an unexpected payload '{fqn}' -> '{file}'")
        if entry.get("use_pickle") is not False:
            raise _refuse(path, f"{name} stores '{fqn}' as a pickle")
    return config


def _check_expression(text, path, where: str, guard: bool = False) -> None:
    """A sympy srepr expression (or, with `guard`, a shape guard over L['input'].size()[i]) made of
    whitelisted calls, names, numbers and operators only."""
    if not isinstance(text, str) or len(text) > 2000 or not EXPR_CHARS.fullmatch(text):
        raise _refuse(path, f"{where} has an unexpected expression {str(text)[:80]!r}")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise _refuse(path, f"{where} has an unexpected expression {text[:80]!r}") from None
    for node in ast.walk(tree):
        if isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.keyword, *OPS)):
            ok = not isinstance(node, ast.keyword) or (node.arg is not None and IDENT.fullmatch(node.arg))
        elif isinstance(node, ast.Constant):
            ok = (isinstance(node.value, (int, float, bool)) and abs(node.value) < 2**63) or (
                isinstance(node.value, str) and (SYMBOL_NAME if not guard else IDENT).fullmatch(node.value))
        elif isinstance(node, ast.Name):
            ok = node.id in (SYMPY_CALLS | SYMPY_NAMES) or (guard and node.id == "L")
        elif isinstance(node, ast.Call):
            ok = (isinstance(node.func, ast.Name) and node.func.id in SYMPY_CALLS) or (
                guard and isinstance(node.func, ast.Attribute) and not node.args and not node.keywords)
        elif isinstance(node, ast.Attribute):
            ok = guard and node.attr == "size"
        elif isinstance(node, ast.Subscript):
            ok = guard and isinstance(node.slice, ast.Constant)
        else:
            ok = False
        if not ok:
            raise _refuse(path, f"{where} has an unexpected expression {text[:80]!r} ({type(node).__name__})")


def _check_target(target, path) -> None:
    m = ATEN_TARGET.fullmatch(str(target))
    ok = target in OTHER_TARGETS or (m is not None and (not m["op"].startswith("__") or ATEN_DUNDER.fullmatch(m["op"])))
    if not ok:
        raise _refuse(path, f"the program calls {str(target)[:80]!r}, which is not an aten operator")


def _check_tree(node, path, key: str = "") -> None:
    """Walk the program's JSON: argument kinds, names, targets, expressions and tree specs."""
    if key in ("target", "expr_str", "in_spec", "out_spec") and not isinstance(node, str):
        raise _refuse(path, f"the program's '{key}' is a {type(node).__name__}, not a string")
    if isinstance(node, dict):
        for k, v in node.items():
            if k.startswith("as_") and k not in ARG_KINDS:
                raise _refuse(path, f"the program has an argument of kind '{k}'")
            if "custom_obj" in k and v:
                raise _refuse(path, f"the program holds script objects ('{k}')")
            _check_tree(v, path, k)
    elif isinstance(node, list):
        for v in node:
            _check_tree(v, path, key)
    elif key in ("name", "as_name") and not IDENT.fullmatch(str(node)):
        raise _refuse(path, f"the program has a value named {str(node)[:80]!r}")
    elif key.endswith("_name") and key != "as_name" and not DOTTED.fullmatch(str(node)):
        raise _refuse(path, f"the program refers to {str(node)[:80]!r}")
    elif key == "target":
        _check_target(node, path)
    elif key == "expr_str":
        _check_expression(node, path, "a symbolic shape")
    elif key in ("in_spec", "out_spec"):
        _check_treespec(node, path)


def _check_treespec(text, path) -> None:
    allowed = {None, "builtins.tuple", "builtins.list", "builtins.dict", "collections.OrderedDict"}
    try:
        spec = json.loads(text)
    except (TypeError, ValueError):
        raise _refuse(path, "the program's input or output structure is unreadable") from None
    found = set()

    def walk(x):
        if isinstance(x, dict):
            found.add(x.get("type"))
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(spec)
    if not found <= allowed:
        raise _refuse(path, f"the program's inputs or outputs are of type {sorted(map(str, found - allowed))}")


def _check_model(raw: bytes, path) -> None:
    try:
        model = json.loads(raw)
        guards = model.get("guards_code", [])
        if not isinstance(guards, list):
            raise _refuse(path, "models/model.json has unreadable guards")
        for g in guards:  # Python source that torch execs when the module is built
            _check_expression(g, path, "a shape guard", guard=True)
        _check_tree(model, path)
    except UnsafeProgramError:
        raise
    except (ValueError, AttributeError, RecursionError):
        raise _refuse(path, "models/model.json is not a serialised program of the expected form") from None


@dataclass
class CheckedArchive:
    members: dict[str, bytes]  # by name below the root folder
    data: bytes  # the checked members repacked: what to hand to torch.export.load


def check_pt2_archive(data: bytes, path) -> CheckedArchive:
    """Refuse (UnsafeProgramError) a .pt2 archive that holds anything but one program, its raw
    weights, a tensors-only sample-inputs pickle and the metadata."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ExportedPolicyError(f"exported policy {path} is not a zip archive (a .pt2 file is one); it is "
                                  f"corrupted or truncated. Fix: export it again with `tapfinger export`.") from None
    with z:
        root, members = _members(z, MEMBERS, path, "the archive")
    for required in ("archive_format", "archive_version", "models/model.json", "data/sample_inputs/model.pt"):
        if required not in members:
            raise _refuse(path, f"the archive lacks {required}")
    if members["archive_format"] != b"pt2" or members.get("byteorder", b"little") != b"little":
        raise _refuse(path, "the archive is not a little-endian pt2 archive")
    _payload_config(members, "data/weights/model_weights_config.json", "weight_", path)
    _payload_config(members, "data/constants/model_constants_config.json", "tensor_", path)
    members["data/sample_inputs/model.pt"] = _check_sample_inputs(members["data/sample_inputs/model.pt"], path)
    _check_model(members["models/model.json"], path)
    return CheckedArchive(members, _repack(root, members))


# serde ScalarType codes of the floating types, as numpy dtypes (bfloat16 is checked on its bits)
FLOAT_CODES = {6: "<f2", 7: "<f4", 8: "<f8"}
BFLOAT16 = 13


def count_nonfinite_weights(members: dict[str, bytes]) -> tuple[int, int]:
    """(non-finite values, values) over the floating-point weight and constant files (each file once,
    however many names share it)."""
    bad = total = 0
    for config_name, folder in (("data/weights/model_weights_config.json", "data/weights/"),
                                ("data/constants/model_constants_config.json", "data/constants/")):
        seen = set()
        for entry in json.loads(members[config_name])["config"].values():
            file = entry["path_name"]
            code = (entry.get("tensor_meta") or {}).get("dtype")
            if file in seen or folder + file not in members:
                continue
            seen.add(file)
            raw = members[folder + file]
            if code in FLOAT_CODES:
                values = np.frombuffer(raw[:len(raw) - len(raw) % np.dtype(FLOAT_CODES[code]).itemsize],
                                       dtype=FLOAT_CODES[code])
                bad += int((~np.isfinite(values)).sum())
                total += values.size
            elif code == BFLOAT16:
                bits = np.frombuffer(raw[:len(raw) - len(raw) % 2], dtype="<u2")
                bad += int(((bits & 0x7F80) == 0x7F80).sum())  # exponent all ones: inf or NaN
                total += bits.size
    return bad, total
