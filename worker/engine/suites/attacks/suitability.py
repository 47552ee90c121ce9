"""Part 2d: source-image suitability (Ozbulak et al., BMVC 2021).

Images that are misclassified or barely classified, or that fall at every budget or at none,
bias an evaluation; each is flagged, and the headline numbers are given without them too.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from ...metrics import Unit, metric, proportion
from .common import Sample, median, share
from .params import attacks_for, budgets, eps_key
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
