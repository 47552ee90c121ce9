"""Sanity flags (in the manner of AutoAttack's checks), reported as structured warnings.

Per sample, on the clean images: do the outputs look like probabilities, are input gradients
zero or NaN, do two forward passes differ? After the attacks: did a weaker attack beat a
stronger one, and is clean accuracy near chance?
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ...attacks import ATTACKS
from ...classifier import Classifier
from ...metrics import path_matches
from ..base import Warning_
from .common import Sample, Sanity
from .params import attacks_for, budgets, eps_key, gradient_free


@torch.enable_grad()
def probe(clf: Classifier, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[Sanity]]:
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
    facts = [Sanity(bool(p), bool(z), bool(n), bool(r))
             for p, z, n, r in zip(prob_like.tolist(), zero.tolist(), nan.tolist(), randomised.tolist())]
    return a, facts


def sanity_warnings(records: list[Sample], params: dict[str, Any], num_classes: int) -> list[dict[str, Any]]:
    n = len(records)
    if not n:
        return []
    out: list[dict[str, Any]] = []
    count = {k: sum(getattr(r.sanity, k) for r in records)
             for k in ("prob_like", "zero_grad", "nan_grad", "randomised")}
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
        eot = sum(1 for r in records if r.sanity.randomised and r.eot)
        advice = ("the robust-accuracy attacks ran with EoT on them" if eot == count["randomised"] else
                  "enable EoT (eot.enabled) before trusting robust accuracy")
        out.append(Warning_("randomized_model",
                            f"two forward passes on the same images differ for {count['randomised']} of {n} "
                            f"samples: the model is randomised (dropout left on, noise layers); {advice}",
                            {"samples": count["randomised"], "n": n, "eot_samples": eot}).to_dict())
    for norm in params["norms"]:
        for weak, strong in weaker_stronger(attacks_for(params, norm)):
            for b, e in enumerate(budgets(params, norm)):
                outcomes = [r.attacks[norm]["success"] for r in records]
                # "is False": under cascade an attack that did not run on a sample has None there
                beaten = sum(1 for s in outcomes if s is not None and s[weak][b] is True and s[strong][b] is False)
                if beaten:
                    out.append(Warning_("weaker_attack_stronger",
                                        f"{weak} fooled the model on {beaten} samples where {strong} failed ({norm} "
                                        f"eps={e:g}): the stronger attack is not converging (too few steps, too "
                                        "small a step size, or masked gradients)",
                                        {"norm": norm, "eps": e, "eps_key": eps_key(e), "weaker": weak,
                                         "stronger": strong, "samples": beaten}).to_dict())
    acc = sum(r.correct for r in records) / n
    chance = 1.0 / num_classes
    if acc <= 1.5 * chance:
        out.append(Warning_("clean_near_chance",
                            f"clean accuracy {acc:.3f} is near chance ({chance:.3f}): robust accuracy means nothing "
                            "here; check the model card's mean/std, class order and input size",
                            {"clean_accuracy": acc, "chance": chance}).to_dict())
    return out


def weaker_stronger(names: list[str]) -> list[tuple[str, str]]:
    """Pairs (weaker, stronger) of ranked gradient attacks in the set, by the attacks' ``strength``."""
    ranked = [a for a in names if ATTACKS[a].strength > 0 and not ATTACKS[a].gradient_free]
    return [(w, s) for w in ranked for s in ranked if ATTACKS[w].strength < ATTACKS[s].strength]


def eot_summary(records: list[Sample], params: dict[str, Any]) -> dict[str, Any]:
    """What the report says about EoT: used or not, k and m, and why."""
    cfg = params["eot"]
    used = sum(1 for r in records if r.eot)
    randomised = sum(1 for r in records if r.sanity.randomised)
    if cfg["enabled"] is True:
        why = "requested (eot.enabled: true)"
    elif cfg["enabled"] is False:
        why = "not requested (eot.enabled: false)" + (
            f"; the model looked randomised on {randomised} samples" if randomised else "")
    elif used:
        why = f"auto: the randomized_model flag fired (two forward passes differed on {randomised} samples)"
    else:
        why = "auto: the model looked deterministic (two forward passes agreed)"
    return {"used": used > 0, "samples": used, "n": len(records), "grad_samples": cfg["grad_samples"],
            "passes": cfg["passes"], "reason": why,
            "scope": "the robust-accuracy attacks (2a); the other parts attack a single pass"}


#: sanity flags after which gradient attacks cannot be trusted to find adversarials
INVALIDATING = ("probabilities_not_logits", "zero_gradients", "nan_gradients", "weaker_attack_stronger",
                "randomized_model")


def unreliable_metrics(records: list[Sample], warnings: list[dict[str, Any]], params: dict[str, Any],
                       paths: list[str]) -> dict[str, Any] | None:
    """The flags that invalidate gradient attacks, and the metric paths they make unreliable.

    None when no such flag fired. A randomised model attacked with EoT on every randomised
    sample does not count. What a gradient-free attack backs stays reliable: robust accuracy of
    a norm whose set has one (and the per-attack figures that include it); ``not_attacked``
    depends on no attack.
    """
    flags = []
    for w in warnings:
        code = w["code"]
        if code not in INVALIDATING or code in flags:
            continue
        if code == "randomized_model" and w["details"]["eot_samples"] == w["details"]["samples"]:
            continue
        flags.append(code)
    if not flags:
        return None
    backed = ["not_attacked"]
    for norm in params["norms"]:
        names = attacks_for(params, norm)
        if not any(gradient_free(a) for a in names):
            continue
        backed += [f"robust_accuracy.{norm}.{{eps}}", f"suitability.unflagged.robust_accuracy.{norm}.{{eps}}",
                   f"multilabel.robust_accuracy.{norm}.{{eps}}"]
        for i, a in enumerate(names):
            upto = names[:i + 1] if params["cascade"] else [a]
            if any(gradient_free(u) for u in upto):
                backed.append(f"per_attack.{norm}.{a}.{{eps}}")
    shaky = [p for p in paths if not any(path_matches(b, p) for b in backed)]
    return {"flags": flags, "metrics": shaky, "gradient_free": {
        norm: [a for a in attacks_for(params, norm) if gradient_free(a)] for norm in params["norms"]}}
