"""Warnings and sanity flags in plain words: what each code means for the person reading.

The engine's own message (with its numbers) is shown beside the sentence; the sentence
says why it matters. A code missing here is shown by its message alone.
"""

from __future__ import annotations

from typing import Any

from ..humanize import fmt_num

#: warning or sanity-flag code -> one sentence for a reader who does not know the code
FLAG_WORDS: dict[str, str] = {
    "probabilities_not_logits": "The model seems to output probabilities (a final softmax), which hides "
                                "gradients from attacks: robust accuracy is probably overestimated.",
    "zero_gradients": "Some inputs have no gradient at all, so gradient attacks could not move them: "
                      "robust accuracy may be overestimated (gradient masking).",
    "nan_gradients": "Some inputs produce broken (NaN or infinite) gradients: attack results on them "
                     "cannot be trusted.",
    "randomized_model": "The model answers differently when asked twice: attacks need EoT to be trusted "
                        "on a randomised model.",
    "weaker_attack_stronger": "A weaker attack succeeded where a stronger one failed: the stronger attack "
                              "did not converge, so robust accuracy may be overestimated.",
    "clean_near_chance": "Clean accuracy is close to guessing: the robustness numbers mean little; check the "
                         "model card (mean, std, class order, input size).",
    "clean_accuracy_near_chance": "Clean accuracy is close to guessing: check the model card (mean, std, "
                                  "class order, input size) before reading any other number.",
    "class_names_differ": "The model's class names differ from the dataset's: labels were matched by "
                          "position, so check that the class order is the same.",
    "n_samples_above_dataset": "More samples were asked for than the dataset holds: the whole dataset was "
                               "used instead.",
    "generator_layers_skipped": "The generator-layer perturbations did not run (no generator was available).",
    "generator_seeds_rejected": "The model recognised few of the generator's images, so the generator-layer "
                                "numbers rest on few seeds.",
    "fragile_region_too_small": "Some region sizes were too small for some images and were skipped there.",
    "falls_at_every_budget": "Some images fall even at the smallest budget: robust accuracy cannot tell them "
                             "apart, and when most images do, the budgets say nothing. Smaller budgets "
                             "(the message suggests some) would.",
    "falls_at_no_budget": "Some images survive even the largest budget: either the model is robust there, or its "
                          "gradients are masked. Larger budgets, or a gradient-free attack, tell which.",
    "low_margin": "The model barely classifies some images (a small clean margin): any perturbation flips them, "
                  "which says little about robustness; the 'unflagged' numbers leave them out.",
    "targeted_targets_present": "The sample holds few of the model's classes, so the targeted study aimed at the "
                                "classes present: each class then has a modify and a mimic rate.",
    "targeted_few_attempts": "The targeted study has too few attempts per class for a rank correlation or a "
                             "plot; those were left out rather than drawn from one or two attempts.",
    "shift_empty_bins": "The second dataset has no images at some levels of uncertainty: the controlled drop "
                        "compares the two sets on the other levels only.",
    "null_space_skipped": "The model's first operation on its input is not a Linear or Conv2d layer that can be "
                          "analysed, so no exact feature collisions were searched for.",
    "null_space_lower_bound": "The null space is at least this large; the iterative search only looked at a few "
                              "of the smallest singular values.",
    "null_space_not_converged": "The search for the smallest singular values stopped early: the smallest "
                                "singular value shown is an upper bound.",
    "null_space_collision_inexact": "Some image pairs that should give identical features changed the output: "
                                    "the model does more to its input than the layer found.",
    "null_space_shards_disagree": "Different workers found different first layers or null spaces; one was kept.",
    "saliency_skipped": "The model has no spatial layer (or its Grad-CAM could not be computed), so where the "
                        "perturbations land was not measured.",
}

#: gate status -> how the page names it
GATE_STATUS_WORDS: dict[str, str] = {
    "pass": "passed",
    "fail": "failed",
    "unreliable": "unreliable: a sanity flag makes this number untrustworthy",
}


def explain(warning: dict[str, Any]) -> dict[str, Any]:
    """A warning as the page shows it: code, plain sentence (or None), the engine's message, details."""
    code = str(warning.get("code", ""))
    details = warning.get("details") or {}
    shown = {k: fmt_num(v) if isinstance(v, float) else v for k, v in details.items()} if isinstance(
        details, dict) else {}
    return {"code": code, "sentence": FLAG_WORDS.get(code), "message": str(warning.get("message", "")),
            "details": shown}
