"""Data roots: the only directories a dataset reference may read from.

A reference comes from a client; its paths are confined to directories the operator
configured. Every path is resolved with :func:`os.path.realpath` (symlinks followed,
``..`` collapsed) before it is compared, so neither ``..`` nor a symlink can lead out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..errors import DatasetError, PathNotAllowedError

ENV_VAR = "ROBUSTAUDIT_DATA_ROOTS"


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
        """Realpath ``path`` and return it, or raise :class:`PathNotAllowedError`."""
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
            DatasetError: the path is allowed but does not exist.
        """
        if not isinstance(path, str) or not path:
            raise DatasetError(f"dataset path must be a non-empty string, got {path!r}")
        p = Path(path)
        if p.is_absolute():
            real = self.check(p, shown=path)
            if not real.exists():
                raise DatasetError(f"dataset path {path!r} does not exist", path=path)
            return real
        candidates = [Path(os.path.realpath(root / p)) for root in self.roots]
        for real in candidates:
            if real.exists():
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
