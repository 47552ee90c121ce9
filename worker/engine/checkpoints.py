"""Shard checkpoints: a retried audit reloads the shards it finished instead of redoing them.

A killed worker then costs the shard it was on, not the audit. Each shard's partial is saved
as JSON under a key that fingerprints the suite, its parameters, the seed, the shard's
sample ids and the engine and torch versions, so a partial is never reused for different
work, nor merged with one a retry after a deploy computed with other code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

import torch

from . import __version__

Partial = dict[str, Any]


class Checkpoints(Protocol):
    """Where shard partials are kept between attempts of one audit."""

    def load(self, key: str) -> Partial | None: ...

    def save(self, key: str, partial: Partial) -> None: ...


def shard_key(suite: str, index: int, count: int, *, params: dict[str, Any], seed: int,
              sample_ids: list[str], engine: str | None = None) -> str:
    """A file-name-safe key: readable position plus a digest of everything the shard depends on.

    ``engine`` is the code that computes it: this engine's and torch's versions unless given.
    """
    engine = engine if engine is not None else f"robustaudit {__version__}, torch {torch.__version__}"
    digest = hashlib.sha256(json.dumps({"params": params, "seed": seed, "ids": sample_ids, "engine": engine},
                                       sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{suite}-{index:05d}-of-{count:05d}-{digest}"


def as_json_data(partial: Partial) -> Partial:
    """The partial as it reads back from JSON, so a fresh and a resumed run merge the same data."""
    return json.loads(json.dumps(partial))


class DirectoryCheckpoints:
    """One JSON file per shard under ``root``; written atomically, so a kill mid-write leaves none.

    Args:
        root: a directory kept across attempts of the same audit.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if "/" in key or key.startswith("."):
            raise ValueError(f"bad checkpoint key {key!r}")
        return self.root / f"{key}.json"

    def load(self, key: str) -> Partial | None:
        path = self._path(key)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # a damaged file is redone, not trusted
            return None
        return data if isinstance(data, dict) else None

    def save(self, key: str, partial: Partial) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(partial, fh)
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
