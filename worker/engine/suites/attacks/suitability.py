"""Part 2d: source-image suitability (Ozbulak et al., BMVC 2021).

Images that are misclassified or barely classified, or that fall at every budget or at none,
bias an evaluation; each is flagged, and the headline numbers are given without them too.
"""

from __future__ import annotations

import json
from enum import Enum
from typing import Any

from ...humanize import GREY_LEVEL, fmt_eps, fmt_levels, fmt_norm, fmt_num
from ...metrics import Unit, metric, proportion
from ..base import Warning_
from .common import Sample, median, share
from .params import attacks_for, budgets, eps_key, gradient_free
from .robustness import UNIT, minimal_norms, robust_flags


class Flag(str, Enum):
    MISCLASSIFIED = "misclassified"
    LOW_MARGIN = "low_margin"
    FALLS_AT_EVERY_BUDGET = "falls_at_every_budget"
    FALLS_AT_NO_BUDGET = "falls_at_no_budget"


def flags_of(r: Sample, params: dict[str, Any]) -> list[Flag]:
    if not r.correct:
        return [Flag.MISCLASSIFIED]
    out = []
    if r.margin < params["suitability_margin"]:
        out.append(Flag.LOW_MARGIN)
    every = none = False
    for norm in params["norms"]:
        robust = robust_flags(r, norm, len(budgets(params, norm)), attacks_for(params, norm))
        every |= not any(robust)
        none |= all(robust)
    if every:
        out.append(Flag.FALLS_AT_EVERY_BUDGET)
    if none:
        out.append(Flag.FALLS_AT_NO_BUDGET)
    return out


def suitability_metrics(records: list[Sample], params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """Metrics, and the flags per sample id (for the artifact)."""
    flags = {r.id: flags_of(r, params) for r in records}
    clean = [r for r in records if not flags[r.id]]
    n, m = len(records), len(clean)
    out: dict[str, Any] = {
        "flagged": metric(n - m, Unit.COUNT, n, "source images with at least one suitability flag"),
        "flags": {f.value: metric(sum(f in v for v in flags.values()), Unit.COUNT, n, f"images flagged {f.value}")
                  for f in Flag},
    }
    unflagged: dict[str, Any] = {"robust_accuracy": {}}
    for norm in params["norms"]:
        eps, names = budgets(params, norm), attacks_for(params, norm)
        fl = [robust_flags(r, norm, len(eps), names) for r in clean]
        unflagged["robust_accuracy"][norm] = {
            eps_key(e): proportion(share([f[b] for f in fl]), m,
                               f"robust accuracy under {norm} eps={e:g} on unflagged images only", eps=e)
            for b, e in enumerate(eps)}
        if params["minimal"] != "none":
            unflagged.setdefault("minimal_perturbation", {})[norm] = metric(
                median(minimal_norms(clean, norm)), UNIT[norm], m,
                f"median minimal {norm} perturbation on unflagged images only")
    out["unflagged"] = unflagged
    return out, {sid: [f.value for f in v] for sid, v in flags.items()}


def _eps_text(norm: str, eps: float) -> str:
    """A budget as people read it; an L∞ one under a grey level in grey levels (``0.078/255``)."""
    return fmt_levels(eps) if norm == "linf" and eps < GREY_LEVEL else fmt_eps(eps)


def _smaller_budgets(norm: str, eps: list[float], median_minimal: float | None) -> tuple[str, list[float]]:
    """Advice on smaller budgets: around the median minimal perturbation when it is known."""
    if median_minimal is not None and 0 < median_minimal < min(eps):
        centre = median_minimal
        why = f"around the median minimal {norm} perturbation, {fmt_norm(median_minimal, UNIT[norm].value)}"
    else:
        centre, why = min(eps) / 4, f"below the smallest, {_eps_text(norm, min(eps))}"
    suggested = [float(f"{centre * f:.3g}") for f in (0.5, 1.0, 2.0)]
    levels = f" ({', '.join(fmt_levels(e) for e in suggested)})" if norm == "linf" else ""
    return f"use smaller budgets {why}, e.g. attacks.{norm}_eps={json.dumps(suggested)}{levels}", suggested


def _share_words(count: int, n: int) -> str:
    return f"every one of the {n} attacked images" if count == n else f"{count} of {n} attacked images"


def suitability_warnings(records: list[Sample], params: dict[str, Any], metrics: dict[str, Any]
                         ) -> list[dict[str, Any]]:
    """Flags that make budgets meaningless or numbers fragile, as warnings that say what to change.

    Per norm: images that fall at every budget (the budgets are too large to tell them apart:
    smaller ones, around the median minimal perturbation), images that fall at none (too small, or
    gradients masked: larger ones, or a gradient-free attack); and images with a low clean margin.
    Every flag that fires on any image is named, so the report never shows these flags without a
    warning; when at least half the attacked images carry one, the message says the budgets tell little.
    """
    attacked = [r for r in records if r.correct]
    n = len(attacked)
    if not n:
        return []
    out: list[dict[str, Any]] = []
    for norm in params["norms"]:
        eps, names = budgets(params, norm), attacks_for(params, norm)
        if not eps:
            continue
        flags = [robust_flags(r, norm, len(eps), names) for r in attacked]
        every = sum(not any(f) for f in flags)
        none = sum(all(f) for f in flags)
        span = f"{_eps_text(norm, min(eps))} to {_eps_text(norm, max(eps))}"
        if every:
            minimal = (((metrics.get("minimal_perturbation") or {}).get(norm) or {}).get("median") or {}).get("value")
            advice, suggested = _smaller_budgets(norm, eps, minimal)
            weight = ("these budgets tell nothing: robust accuracy is 0 at each" if every == n else
                      "most of them tell little" if 2 * every >= n else
                      "they pull robust accuracy down at every budget (suitability.unflagged leaves them out)")
            out.append(Warning_(
                Flag.FALLS_AT_EVERY_BUDGET.value,
                f"{_share_words(every, n)} fall at every {norm} budget ({span}): {weight}; {advice}",
                {"norm": norm, "images": every, "n": n, "smallest_eps": min(eps), "suggested_eps": suggested}
            ).to_dict())
        if none:
            free = [a for a in names if gradient_free(a)]
            check = (f"the gradient-free {', '.join(free)} failed too, so the model is probably robust at these budgets"
                     if free else "or check for masked gradients: add the gradient-free 'square' to attacks.attacks")
            weight = ("these budgets tell nothing: robust accuracy equals clean accuracy at each" if none == n else
                      "most of them tell little" if 2 * none >= n else
                      "they hold robust accuracy up at every budget (suitability.unflagged leaves them out)")
            out.append(Warning_(
                Flag.FALLS_AT_NO_BUDGET.value,
                f"{_share_words(none, n)} fall at no {norm} budget ({span}): {weight}; use larger budgets "
                f"(above {_eps_text(norm, max(eps))}), {check}",
                {"norm": norm, "images": none, "n": n, "largest_eps": max(eps), "gradient_free": free}).to_dict())
    low = [r for r in attacked if r.margin < params["suitability_margin"]]
    if low:
        out.append(Warning_(
            Flag.LOW_MARGIN.value,
            f"{len(low)} of {n} attacked images have a clean probability margin below "
            f"{fmt_num(params['suitability_margin'])} (attacks.suitability_margin): the model barely classifies "
            "them, so almost any perturbation flips them; suitability.unflagged gives the headline numbers "
            "without them",
            {"images": len(low), "n": n, "margin": params["suitability_margin"]}).to_dict())
    return out
