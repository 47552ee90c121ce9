"""Hostile checkpoints for the model-safety tests: rewritten .pt2 archives and zip bombs.

Each builder starts from a real checkpoint written by torch and changes only what an attacker
would, so that the file still looks like its format to torch's own readers.
"""

from __future__ import annotations

import builtins
import json
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path


class WritesMarker:
    """Unpickling it creates ``path`` (what a real payload would do with os.system)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return builtins.open, (self.path, "w")


def marker_pickle(marker: Path) -> bytes:
    return pickle.dumps(WritesMarker(marker), protocol=2)


def rewrite_zip(src: Path, dst: Path, edit: Callable[[str, bytes], bytes | None],
                add: dict[str, bytes] | None = None) -> Path:
    """Copy ``src`` member by member; ``edit(name, data)`` returns new data or None to drop the member."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = edit(info.filename, zin.read(info))
            if data is not None:
                zout.writestr(info.filename, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)
    return dst


def root_of(path: Path) -> str:
    with zipfile.ZipFile(path) as z:
        return z.namelist()[0].split("/", 1)[0]


def pt2_with_pickled_weight(src: Path, dst: Path, marker: Path) -> Path:
    """The first weight marked ``use_pickle`` and replaced by a pickle that creates ``marker``."""
    root = root_of(src)
    config_name = f"{root}/data/weights/model_weights_config.json"

    def edit(name: str, data: bytes) -> bytes:
        if name == config_name:
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name == f"{root}/data/weights/weight_0":
            return marker_pickle(marker)
        return data

    return rewrite_zip(src, dst, edit)


def pt2_with_opaque_constant(src: Path, dst: Path, marker: Path) -> Path:
    """An ``opaque_obj_0`` constant (read by torch with pickle.loads) that creates ``marker``."""
    root = root_of(src)
    config_name = f"{root}/data/constants/model_constants_config.json"

    def edit(name: str, data: bytes) -> bytes:
        if name == config_name:
            config = json.loads(data)
            config["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                        "tensor_meta": None}
            return json.dumps(config).encode()
        return data

    return rewrite_zip(src, dst, edit, add={f"{root}/data/constants/opaque_obj_0": marker_pickle(marker)})


def pt2_with_pickled_sample_inputs(src: Path, dst: Path, marker: Path) -> Path:
    """Sample inputs torch reads with weights_only=True, then (on failure) with a full unpickler."""
    root = root_of(src)
    target = f"{root}/data/sample_inputs/model.pt"
    return rewrite_zip(src, dst, lambda name, data: marker_pickle(marker) if name == target else data)


def pt2_with_expression(src: Path, dst: Path, expression: str) -> Path:
    """Every symbolic expression of the program replaced by ``expression`` (torch sympify's it)."""
    root = root_of(src)

    def edit(name: str, data: bytes) -> bytes:
        if name == f"{root}/models/model.json":
            program = json.loads(data)
            _replace_expr(program, expression)
            return json.dumps(program).encode()
        return data

    return rewrite_zip(src, dst, edit)


def pt2_with_guard(src: Path, dst: Path, guard: str) -> Path:
    """A ``guards_code`` entry (torch pastes it into source and exec's it in ``module()``)."""
    root = root_of(src)

    def edit(name: str, data: bytes) -> bytes:
        if name == f"{root}/models/model.json":
            program = json.loads(data)
            program["guards_code"] = [guard]
            return json.dumps(program).encode()
        return data

    return rewrite_zip(src, dst, edit)


def _replace_expr(tree: object, expression: str) -> None:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "expr_str":
                tree[key] = expression
            else:
                _replace_expr(value, expression)
    elif isinstance(tree, list):
        for value in tree:
            _replace_expr(value, expression)


# -- zip bombs -----------------------------------------------------------------------------------

GIB = 1 << 30


class DeflatedZeros:
    """A raw deflate stream of ``size`` zero bytes (about 1 MB for 1 GiB), computed once."""

    def __init__(self, size: int = GIB) -> None:
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        chunk = bytes(1 << 20)
        parts, crc = [], 0
        for _ in range(size // len(chunk)):
            parts.append(comp.compress(chunk))
            crc = zlib.crc32(chunk, crc)
        parts.append(comp.flush())
        self.size, self.crc, self.data = size, crc, b"".join(parts)


def bomb_zip(src: Path, dst: Path, bomb_member: str, zeros: DeflatedZeros) -> Path:
    """``src``'s members (stored) with ``bomb_member`` replaced by (or added as) the deflated zeros.

    Written by hand because zipfile cannot write an already-compressed member; the result is a
    valid zip that zipfile (and torch's miniz reader) would decompress to ``zeros.size`` bytes.
    """
    with zipfile.ZipFile(src) as z:
        members = [(i.filename, z.read(i)) for i in z.infolist() if i.filename != bomb_member]
    out, central = bytearray(), bytearray()

    def entry(name: str, method: int, crc: int, csize: int, usize: int, data: bytes) -> None:
        raw = name.encode()
        offset = len(out)
        out.extend(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0, crc, csize, usize, len(raw), 0))
        out.extend(raw)
        out.extend(data)
        central.extend(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0, crc, csize, usize,
                                   len(raw), 0, 0, 0, 0, 0, offset))
        central.extend(raw)

    for name, data in members:
        entry(name, 0, zlib.crc32(data), len(data), len(data), data)
    entry(bomb_member, 8, zeros.crc, len(zeros.data), zeros.size, zeros.data)
    count = len(members) + 1
    start = len(out)
    out.extend(central)
    out.extend(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(central), start, 0))
    dst.write_bytes(bytes(out))
    return dst
