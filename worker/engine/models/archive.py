"""Zip-bomb checks for zip-based checkpoints (state dicts, TorchScript, torch.export programs).

Everything here reads the zip's central directory only (``ZipFile.infolist``): no member is
decompressed, so a 1 MB file that declares a 1 GiB member is refused before it costs memory.
Pure standard library, no torch import, so the API process can check an upload without torch.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import ModelLoadError

MIB = 1 << 20
ENV_MAX_EXPANDED_MB = "ROBUSTAUDIT_MAX_CHECKPOINT_EXPANDED_MB"
DEFAULT_MAX_EXPANDED_MB = 8 * 1024
#: Deflate reaches about 1000:1 on zeros; real weights compress to about 1.1:1, code and JSON to ~10:1.
DEFAULT_MAX_RATIO = 200.0
#: Small members (configs, code) may compress well; the ratio bound applies above this size.
RATIO_MIN_BYTES = MIB
#: A checkpoint with more members than this is no model we know (ResNet-152 TorchScript: ~1,500).
DEFAULT_MAX_MEMBERS = 100_000
#: Stored (0) and deflated (8) are what torch writes; anything else we would not expect.
_KNOWN_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


@dataclass(frozen=True)
class ZipLimits:
    """Bounds on what a zip checkpoint may declare.

    Args:
        max_expanded_bytes: total of the members' declared (uncompressed) sizes.
        max_ratio: largest uncompressed/compressed ratio of a member above ``ratio_min_bytes``.
        ratio_min_bytes: members up to this size are not ratio-checked.
        max_members: number of entries in the central directory.
    """

    max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_MB * MIB
    max_ratio: float = DEFAULT_MAX_RATIO
    ratio_min_bytes: int = RATIO_MIN_BYTES
    max_members: int = DEFAULT_MAX_MEMBERS

    @classmethod
    def from_env(cls) -> ZipLimits:
        """The defaults, with the expanded-size bound from ``ROBUSTAUDIT_MAX_CHECKPOINT_EXPANDED_MB``."""
        raw = os.environ.get(ENV_MAX_EXPANDED_MB)
        if raw is None or not raw.strip():
            return cls()
        try:
            mb = int(raw)
        except ValueError:
            raise ValueError(f"{ENV_MAX_EXPANDED_MB} must be a whole number of MB, got {raw!r}") from None
        if mb < 1:
            raise ValueError(f"{ENV_MAX_EXPANDED_MB} must be at least 1, got {mb}")
        return cls(max_expanded_bytes=mb * MIB)


def check_zip_archive(source: str | Path | IO[bytes], *, name: str | None = None,
                      limits: ZipLimits | None = None) -> list[zipfile.ZipInfo]:
    """The members of a zip checkpoint, after checking its central directory against ``limits``.

    Args:
        source: a path or a seekable binary file.
        name: the file name to quote in messages (never a server path); defaults to the path's name.
        limits: the bounds; default :meth:`ZipLimits.from_env`.

    Raises:
        ModelLoadError: not a zip, encrypted or oddly compressed members, duplicate names, too many
            members, a total declared size or a member's compression ratio above the bounds.
    """
    bounds = limits or ZipLimits.from_env()
    label = name or (Path(source).name if isinstance(source, (str, Path)) else "the checkpoint")
    try:
        with zipfile.ZipFile(source) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError) as exc:
        raise ModelLoadError(f"{label} is not a readable zip archive: {exc}") from None
    if len(members) > bounds.max_members:
        raise ModelLoadError(f"{label} has {len(members)} zip members, more than the "
                             f"{bounds.max_members} allowed")
    seen: set[str] = set()
    total = 0
    for info in members:
        if info.filename in seen:
            # Two entries of one name: zipfile and torch's reader may pick different ones.
            raise ModelLoadError(f"{label} has two zip members named {info.filename!r}")
        seen.add(info.filename)
        if info.flag_bits & 0x1:
            raise ModelLoadError(f"{label}: zip member {info.filename!r} is encrypted")
        if info.compress_type not in _KNOWN_COMPRESSION:
            raise ModelLoadError(f"{label}: zip member {info.filename!r} uses compression method "
                                 f"{info.compress_type}; only stored and deflated members are read")
        total += info.file_size
        if total > bounds.max_expanded_bytes:
            raise ModelLoadError(
                f"{label} declares more than {_mb(bounds.max_expanded_bytes)} of uncompressed zip members "
                f"(the limit, {ENV_MAX_EXPANDED_MB}); refused before anything is decompressed",
                limit_bytes=bounds.max_expanded_bytes)
        if info.file_size > bounds.ratio_min_bytes:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > bounds.max_ratio:
                raise ModelLoadError(
                    f"{label}: zip member {info.filename!r} declares {_mb(info.file_size)} from "
                    f"{info.compress_size} compressed bytes (ratio {ratio:.0f}:1, above {bounds.max_ratio:g}:1); "
                    "a zip bomb? refused before anything is decompressed",
                    member=info.filename, ratio=round(ratio, 1))
    return members


def _mb(n: int) -> str:
    return f"{n / MIB:.0f} MiB"
