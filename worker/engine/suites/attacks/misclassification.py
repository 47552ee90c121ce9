"""Part 2c: misclassification classes (Ozbulak et al.). Where do untargeted adversarials land:
in the source image's clean top-3 / top-5 classes, and in its own group of the hierarchy?"""

from __future__ import annotations

from typing import Any

from ...metrics import proportion
from .common import Sample, share
from .params import budgets


def landings(records: list[Sample], norm: str, n_eps: int) -> list[tuple[Sample, int]]:
    """(record, adversarial class) for every worst-case untargeted success at any budget."""
    out = []
    for r in records:
        rec = r.attacks[norm]
        if rec["success"] is None:
            continue
        out += [(r, c) for c in rec["adv_class"][:n_eps] if c is not None]
    return out


def misclassification_metrics(records: list[Sample], params: dict[str, Any], class_names: list[str],
                              hierarchy: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for norm in params["norms"]:
        hits = landings(records, norm, len(budgets(params, norm)))
        n = len(hits)
        part = {
            "top3": proportion(share([c in r.topk[:3] for r, c in hits]), n,
                           f"share of untargeted {norm} successes (all budgets pooled) whose adversarial class is "
                           "in the clean top-3 of the source image"),
            "top5": proportion(share([c in r.topk[:5] for r, c in hits]), n,
                           f"share of untargeted {norm} successes whose adversarial class is in the clean top-5 "
                           f"(top-{min(5, len(class_names))})"),
        }
        same = [hierarchy.get(class_names[c]) is not None
                and hierarchy.get(class_names[c]) == hierarchy.get(class_names[r.label]) for r, c in hits]
        part["same_group"] = proportion(share(same) if hierarchy else None, n if hierarchy else 0,
                                    f"share of untargeted {norm} successes whose adversarial class is in the "
                                    "source class's group" + ("" if hierarchy else
                                                              " (null: the model card has no hierarchy)"))
        out[norm] = part
    return out
