"""Checks of a torch.export ``.pt2`` archive before ``torch.export.load`` sees it.

``torch.export.load`` (torch 2.15) is not a safe loader. Reading its source
(``torch/export/pt2_archive/_package.py``, ``torch/_export/serde/serialize.py``):

- a weight or constant marked ``"use_pickle": true`` in ``*_weights_config.json`` /
  ``*_constants_config.json`` is read with ``torch.load(weights_only=False)``;
- ``opaque_obj_*`` constants go through ``pickle.loads``, ``custom_obj_*`` through TorchScript's unpickler;
- legacy ``data/weights/<model>.pt`` / ``data/constants/<model>.pt`` files and the sample inputs
  (``data/sample_inputs/<model>.pt``) go through ``torch.load`` with a fallback to ``weights_only=False``;
- ``data/aotinductor/`` holds compiled shared libraries, which are loaded (native code);
- every ``expr_str`` of the program goes through ``sympy.sympify``, which ``eval``\\ s its text;
- ``guards_code`` strings are pasted into Python source and ``exec``\\ ed by ``ExportedProgram.module()``;
- node targets are resolved by ``getattr`` on ``torch``/``operator``/``math`` (``torch.save`` included).

So an archive passes only when it holds exactly the members ``torch.export.save`` writes for a
plain program, no payload is pickled, every expression and guard is of a small harmless grammar,
and every node calls an allowed operator. Everything is read from the zip with bounded sizes
after :func:`~.archive.check_zip_archive`; nothing here imports torch except the operator list.
"""

from __future__ import annotations

import ast
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import ModelLoadError
from ..jsonfile import loads_bounded
from .archive import ZipLimits, check_zip_archive
from .operators import refusal

# Members torch.export.save writes (relative to the archive's root folder); {m} is a model name.
_MODEL_JSON = re.compile(r"^models/(?P<m>[A-Za-z0-9_]+)\.json$")
_FIXED_MEMBERS = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"}
_WEIGHT_FILE = re.compile(r"^data/weights/weight_\d+$")
_CONSTANT_FILE = re.compile(r"^data/constants/tensor_\d+$")
_WEIGHTS_CONFIG = re.compile(r"^data/weights/(?P<m>[A-Za-z0-9_]+)_weights_config\.json$")
_CONSTANTS_CONFIG = re.compile(r"^data/constants/(?P<m>[A-Za-z0-9_]+)_constants_config\.json$")
_SAMPLE_INPUTS = re.compile(r"^data/sample_inputs/(?P<m>[A-Za-z0-9_]+)\.pt$")
_EXTRA = re.compile(r"^extra/[^/]+$")  # read as text by the loader; never run

# Why a member torch would read is refused, by the first pattern it matches.
_REFUSED_MEMBERS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^data/aotinductor/"), "holds AOTInductor compiled code (a shared library torch would load)"),
    (re.compile(r"(^|/)opaque_obj_"), "is an opaque object torch would unpickle with pickle.loads"),
    (re.compile(r"(^|/)custom_obj_"), "is a custom object torch would unpickle"),
    (re.compile(r"\.pkl$"), "is a pickle"),
    (re.compile(r"^data/(weights|constants)/[^/]+\.pt$"), "is a legacy pickled payload torch would unpickle"),
]

#: Bounds on the JSON members: a ResNet-18 program is about 0.2 MB and 9 levels deep (parsing
#: takes about ten times the text in memory, so the byte bound is also a memory bound).
MAX_JSON_BYTES = 64 * 1024 * 1024
MAX_JSON_DEPTH = 64
MAX_SMALL_MEMBER = 4096  # archive_format, archive_version, byteorder
MAX_GUARDS = 10_000
MAX_GUARD_CHARS = 10_000

_PYTHON_TARGETS = {f"_operator.{n}" for n in (
    "getitem", "add", "sub", "mul", "floordiv", "truediv", "mod", "pow", "neg", "pos", "abs", "eq", "ne",
    "lt", "le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift")} | {
    f"torch.{n}" for n in ("sym_int", "sym_float", "sym_max", "sym_min", "sym_not", "sym_ite")}
_OP_TARGET = re.compile(r"^torch\.ops\.(?P<ns>[A-Za-z0-9_]+)\.(?P<op>[A-Za-z0-9_]+)(\.(?P<ov>[A-Za-z0-9_]+))?$")

# The grammar of a sympy expression torch writes: Symbol('s77', positive=True, integer=True),
# s0*s1 + 2, FloorDiv(s0, 2), Max(1, s3), Eq(s1, 4) ... Names are checked against a list, so
# sympify's eval can reach nothing but sympy constructors (no builtins, no attributes).
_EXPR_TOKEN = re.compile(r"\s*(?:(?P<num>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)|(?P<str>'[A-Za-z_][A-Za-z0-9_]*')"
                         r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)|(?P<op>\*\*|//|==|!=|<=|>=|[-+*/%()<>,=&|~]))")
_SYMBOL_NAME = re.compile(r"^[a-z]{1,4}\d+$")
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Max", "Min", "Abs", "Mod", "floor",
    "ceiling", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not", "Piecewise", "ITE", "oo", "zoo", "nan",
    "sqrt", "True", "False", "true", "false",
    # torch.utils._sympy.functions (the deserializer's own locals)
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv",
    "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "OpaqueUnaryFn_sqrt",
    # Symbol assumptions (keyword arguments)
    "positive", "negative", "integer", "real", "nonnegative", "nonpositive", "finite", "zero", "nonzero",
})
MAX_EXPR_CHARS = 10_000

# The grammar of a guard (Python source that ExportedProgram.module() exec's): comparisons and
# arithmetic on L['x'].size()[0]-style input sizes, with a few math/sympy helpers.
_GUARD_NODES = (ast.Expression, ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name,
                ast.Subscript, ast.Attribute, ast.Call, ast.Load, ast.And, ast.Or, ast.Not, ast.USub, ast.UAdd,
                ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Add, ast.Sub, ast.Mult, ast.Div,
                ast.FloorDiv, ast.Mod, ast.Pow)
_GUARD_NAMES = frozenset({"L", "math", "inf", "Max", "Min", "Abs", "FloorDiv", "Mod", "PythonMod", "floor",
                          "ceiling", "CeilToInt", "FloorToInt", "IntTrueDiv", "FloatTrueDiv", "ToFloat"})
_GUARD_ATTRS = frozenset({"size", "stride", "storage_offset", "dim", "numel", "isnan", "inf", "floor", "ceil",
                          "trunc", "sqrt"})
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class ExportArchive:
    """What the checks learned about a ``.pt2`` archive.

    Args:
        root: the folder every member lies in.
        models: the model names (``models/<name>.json``).
        sample_inputs: members torch reads with ``torch.load`` (falling back to a full unpickler when
            ``weights_only=True`` fails): the caller must read them with weights-only semantics first.
        torch_version: the torch that exported the program, as its JSON records it ("" if absent).
        schema: the program's export schema version (major, minor), if recorded.
    """

    root: str
    models: list[str] = field(default_factory=list)
    sample_inputs: list[str] = field(default_factory=list)
    torch_version: str = ""
    schema: tuple[int, int] | None = None


def check_export_archive(source: IO[bytes], *, name: str, limits: ZipLimits | None = None) -> ExportArchive:
    """Check a ``.pt2`` archive's members, configs and program JSON; raise ModelLoadError naming the reason."""
    members = check_zip_archive(source, name=name, limits=limits)
    sizes = {info.filename: info.file_size for info in members}
    root = _root(name, list(sizes))
    rel = {n[len(root) + 1:]: n for n in sizes}
    found = ExportArchive(root=root)
    for member in sorted(rel):
        _classify(name, member, found)
    if not found.models:
        raise ModelLoadError(f"{name} holds no torch.export program (no models/<name>.json member)")
    with zipfile.ZipFile(source) as archive:
        def read(member: str, limit: int) -> bytes:
            if sizes[rel[member]] > limit:
                raise ModelLoadError(f"{name}: member {member!r} is {sizes[rel[member]]} bytes, above {limit}")
            return archive.read(rel[member])

        for member, want in (("archive_format", b"pt2"), ("archive_version", b"0")):
            if member not in rel or read(member, MAX_SMALL_MEMBER).strip() != want:
                raise ModelLoadError(f"{name} is not a torch.export archive of this torch: {member!r} is "
                                     f"missing or not {want.decode()!r}")
        for model in found.models:
            for member, kind in ((f"data/weights/{model}_weights_config.json", "weight"),
                                 (f"data/constants/{model}_constants_config.json", "constant")):
                if member not in rel:
                    raise ModelLoadError(f"{name}: member {member!r} is missing (an older or altered archive)")
                _check_payload_config(name, member, _json(name, member, read(member, MAX_JSON_BYTES)), kind, rel)
            member = f"models/{model}.json"
            program = _json(name, member, read(member, MAX_JSON_BYTES))
            _check_program(name, member, program)
            _record_versions(program, found)
    return found


def _record_versions(program: dict[str, Any], found: ExportArchive) -> None:
    """Which torch wrote the program: a loader refusing it can then say why (see models.formats)."""
    version, schema = program.get("torch_version"), program.get("schema_version")
    if isinstance(version, str):
        found.torch_version = version[:64]
    if isinstance(schema, dict) and all(type(schema.get(k)) is int for k in ("major", "minor")):
        found.schema = (schema["major"], schema["minor"])


def _root(name: str, names: list[str]) -> str:
    """The one top folder torch's reader expects every member in."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) != 1 or any("/" not in n for n in names):
        raise ModelLoadError(f"{name} is not a torch.export archive: its members do not share one top folder")
    return tops.pop()


def _classify(name: str, member: str, found: ExportArchive) -> None:
    for pattern, why in _REFUSED_MEMBERS:
        if pattern.search(member):
            raise ModelLoadError(f"{name}: member {member!r} {why}; refused", member=member)
    if (m := _MODEL_JSON.match(member)) is not None:
        found.models.append(m.group("m"))
    elif (m := _SAMPLE_INPUTS.match(member)) is not None:
        found.sample_inputs.append(member)
    elif not (member in _FIXED_MEMBERS or _WEIGHT_FILE.match(member) or _CONSTANT_FILE.match(member)
              or _WEIGHTS_CONFIG.match(member) or _CONSTANTS_CONFIG.match(member) or _EXTRA.match(member)):
        raise ModelLoadError(f"{name}: unexpected member {member!r}; a torch.export.save archive of a plain "
                             "program holds models/, data/weights/, data/constants/, data/sample_inputs/ "
                             "and extra/ only", member=member)


def _json(name: str, member: str, raw: bytes) -> Any:
    try:
        return loads_bounded(raw, max_depth=MAX_JSON_DEPTH, max_bytes=MAX_JSON_BYTES)
    except (UnicodeDecodeError, ValueError) as exc:  # JSONBoundsError, JSONDecodeError, huge integers
        raise ModelLoadError(f"{name}: member {member!r} is not valid JSON: {str(exc)[:200]}") from None


def _check_payload_config(name: str, member: str, config: Any, kind: str, rel: dict[str, str]) -> None:
    """Weights and constants must be raw tensor bytes, never pickles, in files the archive has."""
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        raise ModelLoadError(f"{name}: member {member!r} has no 'config' object")
    folder = "data/weights/" if kind == "weight" else "data/constants/"
    file_pattern = _WEIGHT_FILE if kind == "weight" else _CONSTANT_FILE
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            raise ModelLoadError(f"{name}: {kind} {fqn!r} in {member!r} is not an object")
        if meta.get("use_pickle") is not False:
            raise ModelLoadError(f"{name}: {kind} {fqn!r} is stored as a pickle (\"use_pickle\" in {member!r}), "
                                 "which torch would unpickle with weights_only=False; refused",
                                 member=member, entry=str(fqn))
        path_name = meta.get("path_name")
        if not isinstance(path_name, str) or not file_pattern.match(folder + path_name):
            raise ModelLoadError(f"{name}: {kind} {fqn!r} in {member!r} names the payload {path_name!r}, "
                                 f"not a raw {kind} file", member=member, entry=str(fqn))
        if folder + path_name not in rel:
            raise ModelLoadError(f"{name}: {kind} {fqn!r} refers to {folder + path_name!r}, which is missing")
        if not isinstance(meta.get("tensor_meta"), dict):
            raise ModelLoadError(f"{name}: {kind} {fqn!r} in {member!r} has no tensor_meta")


def _check_program(name: str, member: str, program: Any) -> None:
    """Node targets, sympy expressions, range constraints and guards of the program JSON."""
    if not isinstance(program, dict):
        raise ModelLoadError(f"{name}: member {member!r} is not a JSON object")
    for key, value in _walk(program):
        if key == "target" and isinstance(value, str):
            _check_target(name, value)
        elif key == "expr_str":
            _check_expr(name, value)
        elif key in ("custom_obj_values",) and value:
            raise ModelLoadError(f"{name}: the program uses custom objects (torchbind), which are not accepted")
    ranges = program.get("range_constraints") or {}
    if not isinstance(ranges, dict):
        raise ModelLoadError(f"{name}: 'range_constraints' in {member!r} is not an object")
    for symbol, bounds in ranges.items():
        _check_expr(name, symbol)
        if not isinstance(bounds, dict) or not all(
                v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in bounds.values()):
            raise ModelLoadError(f"{name}: range constraint of {symbol!r} must have integer bounds")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list) or len(guards) > MAX_GUARDS:
        raise ModelLoadError(f"{name}: 'guards_code' in {member!r} must be a list of at most {MAX_GUARDS} strings")
    for guard in guards:
        _check_guard(name, guard)


def _walk(tree: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of nested dicts and lists, iteratively."""
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                yield key, value
                if isinstance(value, (dict, list)):
                    stack.append(value)
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, (dict, list)))


def _check_target(name: str, target: str) -> None:
    if target in _PYTHON_TARGETS:
        return
    m = _OP_TARGET.match(target)
    if m is None:
        raise ModelLoadError(f"{name}: the program calls {target[:200]!r}, which is not an operator; only pure "
                             "tensor operations are accepted", operator=target[:200])
    op = f"{m.group('ns')}::{m.group('op')}"
    reason = refusal(op)
    if reason is not None:
        raise ModelLoadError(f"{name}: {reason}; only pure tensor operations are accepted", operator=op)


def _check_expr(name: str, expr: Any) -> None:
    """A sympy expression string: tokens of the grammar above, names from the list."""
    if not isinstance(expr, str) or len(expr) > MAX_EXPR_CHARS:
        raise ModelLoadError(f"{name}: a symbolic expression in the program is not a string of at most "
                             f"{MAX_EXPR_CHARS} characters")
    pos = 0
    while pos < len(expr):
        token = _EXPR_TOKEN.match(expr, pos)
        if token is None or token.end() == pos:
            if expr[pos:].strip() == "":
                return
            raise ModelLoadError(f"{name}: a symbolic expression of the program is outside the grammar torch "
                                 f"writes (at character {pos}; sympy would evaluate it as Python); refused")
        ident = token.group("name")
        if ident is not None and ident not in _SYMPY_NAMES and not _SYMBOL_NAME.match(ident):
            raise ModelLoadError(f"{name}: a symbolic expression of the program names {ident[:40]!r}, which is "
                                 "not a size symbol or a sympy function (sympy would evaluate it as Python); refused")
        pos = token.end()


def _check_guard(name: str, guard: Any) -> None:
    """A guard: one expression of comparisons and arithmetic on input sizes (it is exec'd as code)."""
    if not isinstance(guard, str) or len(guard) > MAX_GUARD_CHARS:
        raise ModelLoadError(f"{name}: a guard is not a string of at most {MAX_GUARD_CHARS} characters")
    # The text itself is not quoted: it is the attacker's, and could forge log lines.
    bad = (f"{name}: a guard of the program ({len(guard)} characters) is not a plain comparison of input "
           "sizes (torch would exec it as Python); refused")
    # torch pastes the text into generated source: a comment or a line break could end its line there.
    if any(c in guard for c in "#;\\\n\r\x0b\x0c"):
        raise ModelLoadError(bad)
    try:
        tree = ast.parse(guard, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ModelLoadError(bad) from None
    for node in ast.walk(tree):
        if not isinstance(node, _GUARD_NODES):
            raise ModelLoadError(bad)
        if isinstance(node, ast.Name) and node.id not in _GUARD_NAMES:
            raise ModelLoadError(bad)
        if isinstance(node, ast.Attribute) and node.attr not in _GUARD_ATTRS:
            raise ModelLoadError(bad)
        if isinstance(node, ast.Call) and node.keywords:
            raise ModelLoadError(bad)
        if isinstance(node, ast.Constant) and not (
                isinstance(node.value, (int, float, bool)) or node.value is None
                or (isinstance(node.value, str) and _IDENTIFIER.match(node.value))):
            raise ModelLoadError(bad)
