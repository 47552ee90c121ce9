"""Files of the service: uploaded checkpoints (content-addressed by sha256), and each
audit's output directory (``report.json`` and ``artifacts/``).

Uploads are streamed in chunks to a temporary file while their sha256 is computed, then
renamed into place, so a half-written checkpoint is never visible under its digest.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO

from worker.engine.safe_files import list_regular, open_regular, split_name

CHUNK = 1 << 20
_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,12}$")


class UploadTooLarge(Exception):
    """The stream is longer than the configured limit."""


@dataclass(frozen=True)
class StoredFile:
    path: Path
    sha256: str
    size: int


class Storage:
    """The storage root (a local directory or a shared volume).

    Args:
        root: directory that holds ``models/``, ``audits/`` and ``tmp/``.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def remove_partials(self, older_than_s: float = 0) -> int:
        """Remove the ``.part`` files of uploads that never finished (a worker killed mid-upload
        leaves its own); returns how many. At start-up ``older_than_s=0`` removes them all: no
        upload is running yet. A positive age spares uploads in flight in other processes."""
        cutoff = time.time() - older_than_s
        removed = 0
        for part in (self.root / "tmp").glob("*.part"):
            try:
                if part.stat().st_mtime <= cutoff:
                    part.unlink()
                    removed += 1
            except FileNotFoundError:  # its upload finished (or another process removed it) meanwhile
                continue
        return removed

    def save_upload(self, stream: IO[bytes], filename: str, *, max_bytes: int) -> StoredFile:
        """Stream ``stream`` into ``models/<sha256><suffix>``; an existing identical file is reused.

        Whatever ends the copy early (the size limit, a client that disconnects, an I/O error)
        removes the ``.part`` file before the error goes on."""
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        digest, size = hashlib.sha256(), 0
        fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, suffix=".part")
        try:
            # readable by others: the sandboxed check runs as an unprivileged user (never secret: the
            # folders above are the service's, and the sandbox hides them)
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise UploadTooLarge(f"upload exceeds {max_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
            sha = digest.hexdigest()
            suffix = Path(filename or "").suffix
            target = self.root / "models" / f"{sha}{suffix if _SUFFIX.match(suffix) else ''}"
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                os.unlink(tmp_name)
            else:
                os.replace(tmp_name, target)
            return StoredFile(target, sha, size)
        except BaseException:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
            raise

    def audit_dir(self, audit_id: str) -> Path:
        return self.root / "audits" / audit_id

    def checkpoint_dir(self, audit_id: str) -> Path:
        """Shard checkpoints of an audit: kept across attempts, removed when it ends."""
        return self.root / "checkpoints" / audit_id

    def clear_audit(self, audit_id: str) -> None:
        """Remove what an interrupted attempt left, so a retry starts clean."""
        shutil.rmtree(self.audit_dir(audit_id), ignore_errors=True)

    def clear_checkpoints(self, audit_id: str) -> None:
        shutil.rmtree(self.checkpoint_dir(audit_id), ignore_errors=True)

    # An audit's folder was written by the sandboxed model: read it without following a symlink and
    # only as regular files (worker.engine.safe_files), so nothing planted there leads outside.

    def artifacts(self, audit_id: str) -> list[tuple[str, int]]:
        """(name relative to ``artifacts/``, size) of every artifact file, sorted."""
        return list_regular(self.audit_dir(audit_id), ["artifacts"])

    def open_artifact(self, audit_id: str, name: str) -> BinaryIO | None:
        """Artifact ``name`` open for reading, or None if there is no such regular file below
        ``artifacts/`` (a symlink on the way, a FIFO or device, a name that leaves the folder)."""
        parts = split_name(name)
        return open_regular(self.audit_dir(audit_id), ["artifacts", *parts]) if parts is not None else None
