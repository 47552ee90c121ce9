"""One rule for the metric-path keys made of numbers (budgets, fractions, angles, shifts, scales).

``name_`` + the number at 4 significant digits, ``p`` for the decimal point and ``m`` for a
minus sign: ``eps_0p03137``, ``f_0p17``, ``r_0p125``, ``rot_m30``, ``scale_0p8``. A path
segment then holds no dot (which would split it) and no sign a gate parser reads.
"""

from __future__ import annotations

from collections.abc import Iterable


def metric_key(name: str, value: float) -> str:
    """``metric_key("eps", 0.031372) == "eps_0p03137"``; ``metric_key("rot", -30) == "rot_m30"``."""
    return f"{name}_" + f"{value:.4g}".replace(".", "p").replace("-", "m").replace("+", "")


def colliding(name: str, values: Iterable[float]) -> list[float]:
    """The values that share a key with an earlier one (they differ below 4 significant digits)."""
    seen: set[str] = set()
    out = []
    for v in values:
        key = metric_key(name, v)
        if key in seen:
            out.append(v)
        seen.add(key)
    return out
