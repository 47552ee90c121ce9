"""Reading a folder that untrusted code could have written (an audit's output: the sandboxed model
wrote it): never through a symbolic link, never anything but a regular file.

Every path component below the folder is opened with ``O_NOFOLLOW`` relative to its parent's file
descriptor, so a component that is a symlink fails to open instead of leading elsewhere, whenever
it was planted; the folder itself is opened with ``O_NOFOLLOW`` too (its parents are the
operator's). A file is opened non-blocking and checked with ``fstat``: FIFOs, devices and sockets
are refused. A listing descends only into real directories, within a depth and a count.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
#: a listing stops after this many files, and does not go deeper than this
MAX_FILES, MAX_DEPTH = 10_000, 16
#: the longest name of one component (bytes, as the OS counts them)
MAX_NAME_BYTES = 255


def split_name(name: str) -> list[str] | None:
    """The components of a relative ``a/b/c`` name, or None when one is empty, ``.``, ``..``, has a
    NUL or is too long (such a name never names a file below the folder)."""
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or "\0" in part or len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            return None
    return parts


@contextmanager
def _dir_below(base: Path, parts: Sequence[str]) -> Iterator[int | None]:
    """An fd of ``base/parts...`` opened without following any symlink (None when that fails)."""
    fd: int | None = None
    try:
        fd = os.open(base, _DIR)
        for part in parts:
            nxt = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except OSError:  # missing, a symlink (ELOOP), not a directory, a name too long, ...
        if fd is not None:
            os.close(fd)
        fd = None
    try:
        yield fd
    finally:
        if fd is not None:
            os.close(fd)


def open_regular(base: Path, parts: Sequence[str]) -> BinaryIO | None:
    """The regular file ``base/parts...`` open for reading, or None (missing, a symlink on the way,
    a FIFO, a device, a directory, ...). The caller closes it."""
    if not parts:
        return None
    with _dir_below(base, parts[:-1]) as parent:
        if parent is None:
            return None
        try:
            fd = os.open(parts[-1], _FILE, dir_fd=parent)
        except OSError:
            return None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def regular_size(base: Path, parts: Sequence[str]) -> int | None:
    """The size of the regular file ``base/parts...``, or None (as :func:`open_regular`)."""
    handle = open_regular(base, parts)
    if handle is None:
        return None
    with handle:
        return os.fstat(handle.fileno()).st_size


def read_regular(base: Path, parts: Sequence[str], max_bytes: int) -> bytes | None:
    """At most ``max_bytes`` of the regular file ``base/parts...``, or None (as :func:`open_regular`)."""
    handle = open_regular(base, parts)
    if handle is None:
        return None
    with handle:
        return handle.read(max_bytes)


def list_regular(base: Path, parts: Sequence[str] = (), *, max_files: int = MAX_FILES,
                 max_depth: int = MAX_DEPTH) -> list[tuple[str, int]]:
    """(``a/b`` name relative to ``base/parts``, size) of every regular file below it, sorted.

    Symlinks, FIFOs, devices and sockets are left out, and the walk never enters a symlink.
    """
    out: list[tuple[str, int]] = []
    with _dir_below(base, parts) as top:
        if top is None:
            return out
        stack: list[tuple[int, str, int]] = [(os.dup(top), "", 0)]
        try:
            while stack and len(out) < max_files:
                fd, prefix, depth = stack.pop()
                try:
                    with os.scandir(fd) as entries:
                        for entry in entries:
                            if len(out) >= max_files:
                                break
                            if entry.is_file(follow_symlinks=False):
                                out.append((prefix + entry.name, entry.stat(follow_symlinks=False).st_size))
                            elif entry.is_dir(follow_symlinks=False) and depth + 1 < max_depth:
                                try:
                                    stack.append((os.open(entry.name, _DIR, dir_fd=fd), f"{prefix}{entry.name}/",
                                                  depth + 1))
                                except OSError:  # replaced by a symlink since it was listed
                                    continue
                except OSError:
                    pass
                finally:
                    os.close(fd)
        finally:
            for fd, _, _ in stack:
                os.close(fd)
    return sorted(out)
