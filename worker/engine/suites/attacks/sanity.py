"""Sanity flags (in the manner of AutoAttack's checks), reported as structured warnings.

Per sample, on the clean images: do the outputs look like probabilities, are input gradients
zero or NaN, do two forward passes differ? After the attacks: did a weaker attack beat a
stronger one, and is clean accuracy near chance?
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ...classifier import Classifier
from ..base import Warning_
from .common import Record
from .params import WEAKER_STRONGER, attacks_for, budgets, eps_key


@torch.enable_grad()
def probe(clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[Record]]:
    """Clean logits of one batch and the per-sample sanity facts."""
    with torch.no_grad():
        a = clf(x).float()
        b = clf(x).float()
    scale = 1.0 + a.abs().amax(dim=1)
    randomised = (a - b).abs().amax(dim=1) > 1e-4 * scale
    sums = a.sum(dim=1)
    prob_like = (a >= -1e-6).all(dim=1) & (a <= 1 + 1e-6).all(dim=1) & ((sums - 1).abs() < 1e-3)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(clf(xg), y, reduction="sum"), xg)
    flat = grad.flatten(1)
    nan = ~torch.isfinite(flat).all(dim=1)
    zero = ~nan & (flat.abs().amax(dim=1) == 0)
    facts = [{"prob_like": bool(p), "zero_grad": bool(z), "nan_grad": bool(n), "randomised": bool(r)}
             for p, z, n, r in zip(prob_like.tolist(), zero.tolist(), nan.tolist(), randomised.tolist())]
    return a, facts


def sanity_warnings(records: list[Record], params: dict[str, Any], num_classes: int) -> list[dict[str, Any]]:
    n = len(records)
    if not n:
        return []
    out: list[dict[str, Any]] = []
    count = {k: sum(r["sanity"][k] for r in records) for k in ("prob_like", "zero_grad", "nan_grad", "randomised")}
    if count["prob_like"] > n / 2:
        out.append(Warning_("probabilities_not_logits",
                            f"{count['prob_like']} of {n} outputs are non-negative and sum to 1: the model seems "
                            "to end in a softmax; attacks on probabilities suffer vanishing gradients, so robust "
                            "accuracy is overestimated. Export the model without its final softmax.",
                            {"samples": count["prob_like"], "n": n}).to_dict())
    if count["zero_grad"]:
        out.append(Warning_("zero_gradients",
                            f"the input gradient is exactly zero for {count['zero_grad']} of {n} samples: "
                            "gradient-based attacks cannot move them and robust accuracy may be overestimated "
                            "(gradient masking, e.g. a non-differentiable preprocessing step)",
                            {"samples": count["zero_grad"], "n": n}).to_dict())
    if count["nan_grad"]:
        out.append(Warning_("nan_gradients", f"the input gradient has NaN or infinite values for "
                            f"{count['nan_grad']} of {n} samples; attack results on them are unreliable",
                            {"samples": count["nan_grad"], "n": n}).to_dict())
    if count["randomised"]:
        out.append(Warning_("randomized_model",
                            f"two forward passes on the same images differ for {count['randomised']} of {n} "
                            "samples: the model is randomised (dropout left on, noise layers); use an "
                            "expectation-over-transformation attack before trusting robust accuracy",
                            {"samples": count["randomised"], "n": n}).to_dict())
    for norm in params["norms"]:
        names = attacks_for(params, norm)
        for weak, strong in WEAKER_STRONGER:
            if weak not in names or strong not in names:
                continue
            for b, e in enumerate(budgets(params, norm)):
                outcomes = [r["attacks"][norm]["success"] for r in records]
                beaten = sum(1 for s in outcomes if s is not None and s[weak][b] and not s[strong][b])
                if beaten:
                    out.append(Warning_("weaker_attack_stronger",
                                        f"{weak} fooled the model on {beaten} samples where {strong} failed ({norm} "
                                        f"eps={e:g}): the stronger attack is not converging (too few steps, too "
                                        "small a step size, or masked gradients)",
                                        {"norm": norm, "eps": e, "eps_key": eps_key(e), "weaker": weak,
                                         "stronger": strong, "samples": beaten}).to_dict())
    acc = sum(r["correct"] for r in records) / n
    chance = 1.0 / num_classes
    if acc <= 1.5 * chance:
        out.append(Warning_("clean_near_chance",
                            f"clean accuracy {acc:.3f} is near chance ({chance:.3f}): robust accuracy means nothing "
                            "here; check the model card's mean/std, class order and input size",
                            {"clean_accuracy": acc, "chance": chance}).to_dict())
    return out
