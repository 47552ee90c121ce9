"""safetensors files read by the ``safetensors`` library, with errors that say what is wrong.

The library validates the format strictly (offsets tiling the data exactly, shapes matching
sizes, a header under 100 MB) and covers every dtype (F8, unsigned); it peaked at about 0.86 GB
RSS on an 800 MB file where our former reader took 2.3 GB. We check the 8-byte header length
ourselves first, so the common mistakes get a plain message, and translate the library's
``SafetensorError`` text for the rest. Messages quote the file's name, never its directory.
"""

from __future__ import annotations

import struct
from pathlib import Path

import torch

from ..errors import ModelLoadError

# The library refuses headers above 100 MB; we say so before it reads them.
MAX_HEADER_BYTES = 100_000_000

# The library's message (after "Error while deserializing header: ") -> ours.
_EXPLAINED: list[tuple[str, str]] = [
    ("header too small", "is not a safetensors file: too short for a header"),
    ("header too large", f"is not a safetensors file: its header is above the {MAX_HEADER_BYTES}-byte limit"),
    ("invalid header length", "is not a safetensors file (or is truncated): the header runs past the end of the file"),
    ("incomplete metadata", "is truncated or corrupt: its tensors do not cover the data exactly "
                            "(data missing, or bytes after the last tensor)"),
    ("invalid offset", "is corrupt: a tensor's data_offsets leave a gap, overlap another tensor or run beyond "
                       "the data"),
    ("invalid shape, data type, or offset", "is corrupt: a tensor's shape and dtype need a different number of "
                                            "bytes than its data_offsets span"),
    ("unknown variant", "has a tensor of an unknown dtype"),
    ("invalid UTF-8", "is not a safetensors file: its header is not UTF-8 JSON"),
    ("invalid JSON", "is not a safetensors file: its header is not a valid safetensors JSON header"),
]


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU.

    Raises:
        ModelLoadError: the file is unreadable, not safetensors, truncated or corrupt.
    """
    p = Path(path)
    _check_header_length(p)
    try:
        # Imported here: the engine also runs on a box with torch alone, for the other formats.
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise ModelLoadError(f"{p.name} is a safetensors file, and reading one needs the 'safetensors' package, "
                             "which is not installed here (pip install safetensors)") from None
    try:
        tensors = load_file(str(p), device="cpu")
    except SafetensorError as exc:
        raise ModelLoadError(f"{p.name} {_explain(str(exc))}") from None
    except OSError as exc:
        raise ModelLoadError(f"cannot read {p.name}: {exc.strerror or exc}") from None
    for name, tensor in tensors.items():
        # The library takes any byte for BOOL; a byte other than 0/1 is undefined behaviour in torch.
        if tensor.dtype == torch.bool and tensor.numel() and int(tensor.view(torch.uint8).max()) > 1:
            raise ModelLoadError(f"{p.name}: safetensors BOOL entry {name!r} holds bytes other than 0 and 1")
    return tensors


def _check_header_length(p: Path) -> None:
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(9)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {p.name}: {exc.strerror or exc}") from None
    if len(head) < 8:
        raise ModelLoadError(f"{p.name} is not a safetensors file: {size} bytes, too short for a header")
    (n,) = struct.unpack("<Q", head[:8])
    if n > MAX_HEADER_BYTES:
        raise ModelLoadError(f"{p.name} is not a safetensors file: header length {n} is above the "
                             f"{MAX_HEADER_BYTES}-byte limit")
    if 8 + n > size:
        raise ModelLoadError(f"{p.name} is not a safetensors file (or is truncated): header length {n} "
                             f"runs past the end of the {size}-byte file")
    if n and head[8:9] != b"{":
        raise ModelLoadError(f"{p.name} is not a safetensors file: its header is not a JSON object")


def _explain(message: str) -> str:
    detail = message.split("deserializing header:", 1)[-1].strip()
    for needle, ours in _EXPLAINED:
        if needle in detail:
            return f"{ours} (safetensors: {detail[:200]})"
    return f"is not a readable safetensors file: {detail[:200]}"
