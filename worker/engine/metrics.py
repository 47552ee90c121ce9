"""Metric leaves: every number in a report says what it is.

A suite's ``metrics`` is a nested dict whose leaves are made by :func:`metric`; a gate
names a leaf by its dotted path and compares the leaf's ``value``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Any


class Unit(str, Enum):
    FRACTION = "fraction"  # in [0, 1]
    COUNT = "count"
    SECONDS = "seconds"
    PER_SECOND = "per_second"
    NATS = "nats"
    L2 = "l2_norm"
    LINF = "linf_norm"
    RATIO = "ratio"
    CORRELATION = "correlation"
    ITERATIONS = "iterations"


def metric(value: float | None, unit: Unit, n: int, description: str, **extra: Any) -> dict[str, Any]:
    """A metric leaf. ``value`` None means "undefined for this sample" (e.g. no samples of a class)."""
    if value is not None:
        value = float(value)
        if not math.isfinite(value):
            value = None
    leaf: dict[str, Any] = {"value": value, "unit": unit.value, "n": int(n), "description": description}
    leaf.update(extra)
    return leaf


def is_leaf(node: Any) -> bool:
    return isinstance(node, Mapping) and "value" in node and "unit" in node


def iter_leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """(dotted path, leaf) for every metric leaf under ``tree``."""
    for key, node in tree.items():
        path = f"{prefix}{key}"
        if is_leaf(node):
            yield path, node
        elif isinstance(node, Mapping):
            yield from iter_leaves(node, path + ".")


def lookup(tree: Mapping[str, Any], path: str) -> dict[str, Any] | None:
    """The leaf at a dotted path, or None."""
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if is_leaf(node) else None


def path_matches(pattern: str, path: str) -> bool:
    """Catalog patterns use ``{placeholder}`` for one free segment (a class, a group, ...)."""
    pat, got = pattern.split("."), path.split(".")
    return len(pat) == len(got) and all(
        (p.startswith("{") and p.endswith("}") and g) or p == g for p, g in zip(pat, got))
