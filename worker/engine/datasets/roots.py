"""Data roots: the only directories a dataset reference may read from.

A reference comes from a client; its paths are confined to directories the operator
configured. Every path is resolved with :func:`os.path.realpath` (symlinks followed,
``..`` collapsed) before it is compared, so neither ``..`` nor a symlink can lead out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..errors import DatasetError, InvalidPathError, PathNotAllowedError

ENV_VAR = "ROBUSTAUDIT_DATA_ROOTS"
#: what Linux takes: a path of PATH_MAX bytes, a component of NAME_MAX bytes
MAX_PATH_BYTES, MAX_COMPONENT_BYTES = 4096, 255


def check_path_length(path: str) -> None:
    """Raise :class:`InvalidPathError` for a path the OS would refuse (``File name too long``)."""
    raw = path.encode("utf-8", "surrogateescape")
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if len(raw) >= MAX_PATH_BYTES or longest > MAX_COMPONENT_BYTES or b"\0" in raw:
        raise InvalidPathError(f"dataset path of {len(raw)} bytes: paths are limited to {MAX_PATH_BYTES - 1} "
                               f"bytes and {MAX_COMPONENT_BYTES} per component, without NUL", length=len(raw),
                               longest_component=longest)


def default_data_root(environ: Mapping[str, str] | None = None) -> Path:
    """The data root when ``ROBUSTAUDIT_DATA_ROOTS`` is unset: ``data`` in the service's storage folder
    (``ROBUSTAUDIT_STORAGE_DIR``, else ``ROBUSTAUDIT_HOME``/storage, else ``var/storage``), absolute.

    The one definition behind both :meth:`DataRoots.from_env` (CLI, engine) and the service's
    ``Config``, so a dataset path the CLI accepts is the one the service accepts. Never the working
    directory: that would show the code, and the service's own files, to every audit.
    """
    env = os.environ if environ is None else environ
    home = Path(env.get("ROBUSTAUDIT_HOME") or "var")
    storage = Path(env.get("ROBUSTAUDIT_STORAGE_DIR") or home / "storage")
    return (storage / "data").absolute()


def _exists(real: Path) -> bool:
    """Whether ``real`` exists; a path the OS cannot look up (too long once resolved) is invalid."""
    try:
        return real.exists()
    except OSError:
        raise InvalidPathError("dataset path cannot be looked up: it is too long once resolved") from None


class DataRoots:
    """The directories dataset paths must resolve into.

    Args:
        roots: allowed directories; each is resolved with ``os.path.realpath`` once, here.
    """

    def __init__(self, roots: Iterable[str | os.PathLike[str]]) -> None:
        resolved = tuple(Path(os.path.realpath(os.fspath(r))) for r in roots)
        if not resolved:
            raise ValueError("DataRoots needs at least one directory")
        self.roots: tuple[Path, ...] = resolved

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DataRoots:
        """Roots from ``ROBUSTAUDIT_DATA_ROOTS`` (``os.pathsep``-separated directories).

        When the variable is unset or empty, the only root is :func:`default_data_root`.
        Relative entries are taken relative to the current working directory.
        """
        env = os.environ if environ is None else environ
        entries = [e for e in env.get(ENV_VAR, "").split(os.pathsep) if e.strip()]
        return cls(entries or [default_data_root(env)])

    def __iter__(self) -> Iterator[Path]:
        return iter(self.roots)

    def __repr__(self) -> str:
        return f"DataRoots({[str(r) for r in self.roots]!r})"

    def contains(self, real_path: str | os.PathLike[str]) -> bool:
        """Whether an already realpath'd path lies inside (or is) one of the roots."""
        p = Path(real_path)
        return any(p.is_relative_to(root) for root in self.roots)

    def check(self, path: str | os.PathLike[str], *, shown: str | None = None) -> Path:
        """Realpath ``path`` and return it, or raise :class:`PathNotAllowedError`
        (:class:`InvalidPathError` when no filesystem could hold it)."""
        check_path_length(os.fspath(path))
        real = Path(os.path.realpath(os.fspath(path)))
        if not self.contains(real):
            raise self._not_allowed(shown if shown is not None else os.fspath(path), real)
        return real

    def resolve(self, path: str) -> Path:
        """The real path of an existing file or directory named by a reference.

        A relative path is tried under each root in order and the first that exists wins;
        an absolute path must lie inside a root. Either way the real path (symlinks
        followed) must be inside one of the roots.

        Raises:
            PathNotAllowedError: the path resolves outside every root.
            InvalidPathError: the path is too long for the OS (no file can have it).
            DatasetError: the path is allowed but does not exist.
        """
        if not isinstance(path, str) or not path:
            raise DatasetError(f"dataset path must be a non-empty string, got {path!r}")
        check_path_length(path)
        p = Path(path)
        if p.is_absolute():
            real = self.check(p, shown=path)
            if not _exists(real):
                raise DatasetError(f"dataset path {path!r} does not exist", path=path)
            return real
        for root in self.roots:
            check_path_length(str(root / p))
        candidates = [Path(os.path.realpath(root / p)) for root in self.roots]
        for real in candidates:
            if _exists(real):
                if not self.contains(real):
                    raise self._not_allowed(path, real)
                return real
        outside = [real for real in candidates if not self.contains(real)]
        if outside:
            raise self._not_allowed(path, outside[0])
        raise DatasetError(f"dataset path {path!r} not found under the data roots "
                           f"{[str(r) for r in self.roots]}", path=path,
                           roots=[str(r) for r in self.roots])

    def _not_allowed(self, shown: str, real: Path) -> PathNotAllowedError:
        roots = [str(r) for r in self.roots]
        return PathNotAllowedError(
            f"dataset path {shown!r} resolves to {str(real)!r}, outside the data roots {roots}; "
            f"set {ENV_VAR} to allow another directory", path=shown, roots=roots)
