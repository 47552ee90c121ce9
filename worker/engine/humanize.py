"""Numbers written for people: eps as the fraction a person reads (8/255), no float noise.

Machine-readable outputs (report.json, metric keys) keep the exact floats; everything a
person reads (summaries, report.html, plot labels, gate results in words) goes through here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any


def fmt_eps(eps: float) -> str:
    """``8/255`` for 0.031372549, ``0.5`` for 0.5, ``0.03`` for 0.03; else 4 significant digits."""
    if not math.isfinite(eps) or eps == 0:
        return fmt_num(eps)
    if _is_multiple(eps, 1000):  # a short decimal: 0.1, 0.03, 0.5, 1
        return fmt_num(eps)
    if _is_multiple(eps, 255):  # pixel levels of an 8-bit image
        return f"{round(eps * 255)}/255"
    return fmt_num(eps)


def _is_multiple(x: float, den: int) -> bool:
    num = x * den
    return abs(num - round(num)) < 1e-6 * max(1.0, abs(num))


def fmt_num(x: float | int | None, digits: int = 4) -> str:
    """``0.36`` for 0.36000000000000004: ``digits`` significant digits, no trailing zeros."""
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    text = f"{x:.{digits}g}"
    if "e" in text:
        return text
    return text


def fmt_pct(x: float | None, digits: int = 1) -> str:
    """``36.0%`` for 0.36."""
    if x is None or not math.isfinite(x):
        return "–"
    return f"{100 * x:.{digits}f}%"


def fmt_delta(x: float | None, digits: int = 3) -> str:
    """``+0.05`` or ``-0.05``: a change, always signed."""
    if x is None or not math.isfinite(x):
        return "–"
    return ("+" if x >= 0 else "-") + fmt_num(abs(x), digits)


#: a long decimal in free text (a warning's message), optionally after "eps=" or "eps "
_LONG_DECIMAL = re.compile(r"(?<![\w.])(eps\s*[=:]?\s*)?(-?\d+\.\d{5,}(?:e-?\d+)?)(?![\d])")


def fmt_text(text: str) -> str:
    """Free text with its float noise rounded (``0.36000000000000004`` -> ``0.36``) and eps values
    as people read them (``eps=0.03137254901960784`` -> ``eps=8/255``)."""
    def one(m: re.Match[str]) -> str:
        prefix, number = m.group(1) or "", float(m.group(2))
        return prefix + (fmt_eps(number) if prefix else fmt_num(number))

    return _LONG_DECIMAL.sub(one, text)


#: one grey level of an 8-bit image, in the [0, 1] pixel units every budget and norm is in
GREY_LEVEL = 1 / 255
#: metric units that are perturbation sizes in pixel units
_NORM_UNITS = ("linf_norm", "l2_norm")


def fmt_levels(x: float) -> str:
    """A size in pixel units as grey levels of an 8-bit image: ``0.078/255`` for 0.0003065."""
    levels = x * 255
    return f"{fmt_num(levels, 2 if abs(levels) < 1 else 3)}/255"


def fmt_norm(value: float | None, unit: str | None) -> str:
    """A perturbation size for people: an L∞ norm in grey levels (``0.078/255``), an L2 norm as its
    number with the grey levels beside it (``0.0123 (3.14/255)``); anything else as :func:`fmt_num`."""
    if value is None or not math.isfinite(value) or unit not in _NORM_UNITS:
        return fmt_num(value)
    if unit == "linf_norm":
        return fmt_levels(value)
    return f"{fmt_num(value)} ({fmt_levels(value)})"


def below_grey_level(value: float | None, unit: str | None) -> bool:
    """A perturbation size above zero but under one grey level of an 8-bit image."""
    return (unit in _NORM_UNITS and value is not None and math.isfinite(value)
            and 0 < value < GREY_LEVEL)


def grey_level_note(label: str, value: float | None, unit: str | None) -> str | None:
    """What a perturbation under one grey level means, or None when it is not under one."""
    if not below_grey_level(value, unit):
        return None
    assert value is not None
    return (f"{label} = {fmt_norm(value, unit)} is below one grey level (1/255): smaller than the step between "
            "8-bit pixel values, so an adversarial image saved at 8 bits would not hold this perturbation as "
            "computed; the model changes its answer for a change no 8-bit image can show")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def sample_size_text(report: Mapping[str, Any]) -> str:
    """The data's class count beside the model's: ``17 samples of 5 classes; the model has 1000``
    (the report's ``dataset.classes`` lists every class of the model with its sample count)."""
    dataset = report.get("dataset") or {}
    n = dataset.get("n_samples")
    classes = [c for c in dataset.get("classes") or [] if isinstance(c, Mapping)]
    present = sum(1 for c in classes if isinstance(c.get("n"), int) and c["n"] > 0)
    model = (report.get("model") or {}).get("num_classes")
    samples = _count(n, "sample", "samples") if isinstance(n, int) else "? samples"
    text = f"{samples} of {_count(present, 'class', 'classes')}"
    if isinstance(model, int) and model != present:
        text += f"; the model has {model}"
    return text
