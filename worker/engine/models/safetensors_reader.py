"""A small, strict reader of the safetensors format, so the engine needs no extra package.

Layout: an 8-byte little-endian header length ``n``, ``n`` bytes of a UTF-8 JSON object
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``,
then the raw little-endian tensor bytes; offsets are relative to the end of the header and
must tile the data exactly (no gaps, no overlaps, nothing after the last tensor). Anything
else is a :class:`ModelLoadError`: a malformed file must never turn into garbage weights.
"""

from __future__ import annotations

import json
import math
import struct
import sys
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelLoadError

# The reference implementation refuses headers above 100 MB; so do we.
MAX_HEADER_BYTES = 100_000_000

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def read_header(path: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, str], int]:
    """Validated tensor entries, the ``__metadata__`` map and the data section's offset."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            size = p.stat().st_size
            head = f.read(8)
            if len(head) < 8:
                raise ModelLoadError(f"{p} is not a safetensors file: {size} bytes, too short for a header")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise ModelLoadError(f"{p} is not a safetensors file: header length {n} is above the "
                                     f"{MAX_HEADER_BYTES}-byte limit")
            if 8 + n > size:
                raise ModelLoadError(f"{p} is not a safetensors file (or is truncated): header length {n} "
                                     f"runs past the end of the {size}-byte file")
            raw = f.read(n)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {p}: {exc}") from None
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ModelLoadError(f"{p} is not a safetensors file: its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ModelLoadError(f"{p} is not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ModelLoadError(f"{p}: safetensors '__metadata__' must map strings to strings")
    data_len = size - 8 - n
    entries = {name: _entry(p, name, info, data_len) for name, info in header.items()}
    _check_tiling(p, entries, data_len)
    return entries, metadata, 8 + n


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU, each in its own (aligned) storage."""
    p = Path(path)
    entries, _, data_start = read_header(p)
    data = bytearray(p.stat().st_size - data_start)
    try:
        with p.open("rb") as f:
            f.seek(data_start)
            got = f.readinto(data)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {p}: {exc}") from None
    if got != len(data):
        raise ModelLoadError(f"{p} changed while it was read")
    blob = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
    return {name: _tensor(p, name, info, blob) for name, info in entries.items()}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _is_uint(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _entry(p: Path, name: str, info: Any, data_len: int) -> dict[str, Any]:
    bad = f"{p}: safetensors entry {name!r}"
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise ModelLoadError(f"{bad} must have exactly 'dtype', 'shape' and 'data_offsets'")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPES:
        raise ModelLoadError(f"{bad} has dtype {dtype!r}; supported: {sorted(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_uint(d) for d in shape):
        raise ModelLoadError(f"{bad} has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_uint(o) for o in offsets)
            or offsets[0] > offsets[1]):
        raise ModelLoadError(f"{bad} has invalid data_offsets {offsets!r}")
    if offsets[1] > data_len:
        raise ModelLoadError(f"{bad} has data_offsets {offsets} beyond the {data_len} bytes of data "
                             "(the file is truncated or corrupt)")
    itemsize = torch.empty(0, dtype=DTYPES[dtype]).element_size()
    expected = math.prod(shape) * itemsize
    if offsets[1] - offsets[0] != expected:
        raise ModelLoadError(f"{bad}: shape {shape} of {dtype} needs {expected} bytes but data_offsets "
                             f"{offsets} span {offsets[1] - offsets[0]}")
    return {"dtype": dtype, "shape": shape, "begin": offsets[0], "end": offsets[1]}


def _check_tiling(p: Path, entries: dict[str, dict[str, Any]], data_len: int) -> None:
    position = 0
    for name, info in sorted(entries.items(), key=lambda kv: (kv[1]["begin"], kv[1]["end"])):
        if info["begin"] != position:
            what = "overlaps the previous tensor" if info["begin"] < position else "leaves a gap before it"
            raise ModelLoadError(f"{p}: safetensors entry {name!r} {what} (data_offsets start at "
                                 f"{info['begin']}, expected {position})")
        position = info["end"]
    if position != data_len:
        raise ModelLoadError(f"{p}: safetensors data has {data_len - position} bytes after the last tensor")


def _tensor(p: Path, name: str, info: dict[str, Any], blob: torch.Tensor) -> torch.Tensor:
    dtype = DTYPES[info["dtype"]]
    # clone(): a fresh, aligned storage per tensor, independent of the file's buffer.
    raw = blob[info["begin"]:info["end"]].clone()
    if sys.byteorder == "big" and raw.numel():
        width = torch.empty(0, dtype=dtype).element_size()
        raw = raw.view(-1, width).flip(1).contiguous().view(-1)
    if dtype == torch.bool and raw.numel() and int(raw.max()) > 1:
        raise ModelLoadError(f"{p}: safetensors BOOL entry {name!r} holds bytes other than 0 and 1")
    return raw.view(dtype).view(info["shape"])
