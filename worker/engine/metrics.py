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


#: the normal quantile of a two-sided 95% interval
Z95 = 1.959963984540054
#: how the ``ci95`` of a proportion leaf is computed (written beside it, so a reader knows)
CI95_METHOD = "wilson"


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of a proportion ``successes / n``; None when ``n`` is 0.

    Wilson rather than the normal (Wald) interval: it stays inside [0, 1] and keeps its
    coverage at 0/n and n/n, which robust accuracies often are on small samples.
    """
    if n <= 0:
        return None
    p = min(max(successes / n, 0.0), 1.0)
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0/n and n/n the bound is exactly 0 (or 1): rounding must not push it off.
    low = 0.0 if p == 0 else max(0.0, centre - half)
    high = 1.0 if p == 1 else min(1.0, centre + half)
    return low, high


def proportion(value: float | None, n: int, description: str, **extra: Any) -> dict[str, Any]:
    """A metric leaf for a share of ``n`` samples (k/n, unit fraction) with its 95% interval.

    The leaf carries ``ci95: [low, high]`` and ``ci95_method: "wilson"``; an undefined value
    or ``n`` = 0 gets ``ci95: null``. Use :func:`metric` for a fraction that is not a count of
    samples over ``n`` (a mean confidence, a calibration error, an average over severities).
    """
    leaf = metric(value, Unit.FRACTION, n, description, **extra)
    ci = None if leaf["value"] is None else wilson_interval(leaf["value"] * leaf["n"], leaf["n"])
    leaf["ci95"] = None if ci is None else [ci[0], ci[1]]
    leaf["ci95_method"] = CI95_METHOD
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


#: a gate or a comparison may name a bound of a leaf's interval: ``PATH.ci95_low``
INTERVAL_BOUNDS = {"ci95_low": 0, "ci95_high": 1}


def lookup_value(tree: Mapping[str, Any], path: str) -> tuple[dict[str, Any] | None, float | None, str | None]:
    """(leaf, value, why the value is missing) at ``path``; ``PATH.ci95_low`` / ``.ci95_high``
    read a bound of the leaf's 95% interval (a fragile suite's own ``ci95_low`` leaves are read
    as leaves)."""
    leaf = lookup(tree, path)
    if leaf is not None:
        return leaf, leaf["value"], None if leaf["value"] is not None else "metric undefined for this sample"
    head, _, bound = path.rpartition(".")
    parent = lookup(tree, head) if bound in INTERVAL_BOUNDS and head else None
    if parent is None:
        return None, None, "metric not present in the report"
    if "ci95" not in parent:
        return parent, None, f"metric {head} has no 95% interval (it is not a share of samples)"
    if parent["ci95"] is None:
        return parent, None, "metric undefined for this sample"
    return parent, float(parent["ci95"][INTERVAL_BOUNDS[bound]]), None


class Better(str, Enum):
    """Which way a metric improves, for comparisons of two reports."""

    HIGHER = "higher"
    LOWER = "lower"
    NEITHER = "neither"  # descriptive: a change is listed, but is neither a regression nor a gain


#: path segments that say which way a metric improves; the segment nearest the leaf decides.
#: A leaf may say it itself with ``better="higher"`` (or lower/neither) as an extra field.
_LOWER = frozenset({
    "error", "ece", "mce", "relative_mce", "drop", "relative_drop", "nll", "success_rate", "growing_success_rate",
    "surrogate_success", "target_fooled", "transfer_rate", "modify", "mimic", "easiest_to_modify",
    "easiest_to_mimic", "hardest_to_modify", "hardest_to_mimic", "found", "flagged", "flags", "strict_shift",
    "loose_shift", "strict_shrink", "loose_shrink"})
_HIGHER = frozenset({
    "top1", "top5", "robust_accuracy", "per_attack", "worst_case", "scale_worst_case", "transforms", "scale",
    "region_accuracy", "mean_accuracy", "clean", "median_eps", "minimal_perturbation", "crops_per_second"})
_NEITHER = frozenset({"spearman", "mean_confidence", "misclassification", "not_attacked", "crops", "seeds_drawn",
                      "seeds_kept", "l0", "fraction"})
#: containers whose keys are names (classes, groups): the name says nothing about direction
_NAMED = frozenset({"per_class", "modify", "mimic"})


def better(path: str, leaf: Mapping[str, Any]) -> Better:
    """Which way ``leaf`` (at dotted ``path``, suite first) improves.

    The leaf's own ``better`` field wins; else the unit (seconds and nats: lower; per second:
    higher); else the path segment nearest the leaf that names a known kind of metric
    (``...corruptions.fog.error``: lower; ``...corruptions.fog.s3``, an accuracy: higher).
    Unknown kinds are ``neither``: a comparison lists their change without ranking it.
    """
    own = leaf.get("better")
    if own in {b.value for b in Better}:
        return Better(own)
    unit = leaf.get("unit")
    if unit in (Unit.SECONDS.value, Unit.NATS.value):
        return Better.LOWER
    if unit == Unit.PER_SECOND.value:
        return Better.HIGHER
    parts = path.split(".")
    if "corruptions" in parts[:-1] and (parts[-1] == "mean" or _is_severity(parts[-1])):
        return Better.HIGHER  # a corruption's accuracy at one severity, or averaged over them
    segments = parts[:-1] if len(parts) > 1 and parts[-2] in _NAMED else parts
    for seg in reversed(segments):
        for table, direction in ((_NEITHER, Better.NEITHER), (_LOWER, Better.LOWER), (_HIGHER, Better.HIGHER)):
            if seg in table:
                return direction
    return Better.NEITHER


def _is_severity(key: str) -> bool:
    return key[:1] == "s" and key[1:].isdigit()
