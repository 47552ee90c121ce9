"""Parameters of the ``attacks`` suite (one definition; the API schema is built from it)."""

from __future__ import annotations

from typing import Any

from ...attacks import Norm, Objective
from ...attacks.masks import MaskShape
from ...errors import SpecError
from ...params import Param, ParamKind, ParamSchema

#: attacks the untargeted part (2a) may use; CW-L2 runs only under the L2 norm.
UNTARGETED_ATTACKS = ("fgsm", "pgd", "cw")
#: the order of strength used by the "weaker attack stronger" sanity flag
WEAKER_STRONGER = (("fgsm", "pgd"),)

#: the surrogate model of the transfer part (2g): a checkpoint path and its card, or (over the
#: API) a registered model id that the service replaces by the stored path and card
SURROGATE = ParamSchema((
    Param("model", ParamKind.STR, None, "surrogate checkpoint path (the service fills it in from model_id)",
          nullable=True),
    Param("card", ParamKind.JSON, None, "surrogate model card: a path, the card object, or null (the "
          "<stem>.card.json beside the checkpoint)", nullable=True),
    Param("model_id", ParamKind.STR, None, "API only: a registered model id; the service resolves it to the "
          "stored checkpoint and card", nullable=True),
))

SCHEMA = ParamSchema((
    Param("norms", ParamKind.CHOICE_LIST, ["linf", "l2"], "threat models to evaluate",
          choices=tuple(n.value for n in Norm), max_items=2),
    Param("linf_eps", ParamKind.FLOAT_LIST, [1 / 255, 2 / 255, 4 / 255, 8 / 255],
          "L-inf budgets in [0, 1] pixel units", minimum=1e-6, maximum=1.0, max_items=16),
    Param("l2_eps", ParamKind.FLOAT_LIST, [0.25, 0.5, 1.0], "L2 budgets in [0, 1] pixel units",
          minimum=1e-6, maximum=1000.0, max_items=16),
    Param("attacks", ParamKind.CHOICE_LIST, ["fgsm", "pgd", "cw"],
          "attacks whose worst case per sample gives robust accuracy (cw: L2 only)",
          choices=UNTARGETED_ATTACKS),
    Param("pgd_steps", ParamKind.INT, 20, "PGD steps per restart", minimum=1, maximum=10_000),
    Param("pgd_rel_step", ParamKind.FLOAT, None, "PGD step size as a fraction of eps (null: 2.5 / steps)",
          minimum=1e-6, maximum=10.0, nullable=True),
    Param("pgd_restarts", ParamKind.INT, 1, "PGD random restarts (later ones attack only what is still robust)",
          minimum=1, maximum=100),
    Param("pgd_loss", ParamKind.CHOICE, "ce", "PGD loss: cross-entropy or logit margin", choices=("ce", "margin")),
    Param("pgd_random_start", ParamKind.BOOL, True, "start PGD from a random point of the ball"),
    Param("early_exit", ParamKind.BOOL, True, "drop samples from PGD batches once they fall (false: every step "
          "on every sample, the fixed-cost baseline; same results)"),
    Param("check_every", ParamKind.INT, 1, "test for success (early exit) every this many PGD steps",
          minimum=1, maximum=1000),
    Param("cw_steps", ParamKind.INT, 50, "CW-L2 Adam steps per search round", minimum=1, maximum=10_000),
    Param("cw_search_steps", ParamKind.INT, 3, "CW-L2 rounds of search over the constant c", minimum=1, maximum=20),
    Param("cw_c", ParamKind.FLOAT, 1.0, "CW-L2 initial constant c", minimum=1e-6, maximum=1e6),
    Param("cw_lr", ParamKind.FLOAT, 0.01, "CW-L2 Adam learning rate", minimum=1e-6, maximum=10.0),
    Param("minimal", ParamKind.CHOICE, "fmn", "minimal-perturbation method: fast minimum-norm attack, or none",
          choices=("fmn", "none")),
    Param("minimal_steps", ParamKind.INT, 100, "FMN iterations", minimum=1, maximum=10_000),
    Param("targeted", ParamKind.BOOL, True, "run the targeted all-pairs (modify / mimic) study"),
    Param("targeted_norm", ParamKind.CHOICE, "linf", "norm of the targeted attack",
          choices=tuple(n.value for n in Norm)),
    Param("targeted_eps", ParamKind.FLOAT, 8 / 255, "budget of the targeted attack", minimum=1e-6, maximum=1000.0),
    Param("targeted_steps", ParamKind.INT, 20, "PGD steps of the targeted attack", minimum=1, maximum=10_000),
    Param("max_targets", ParamKind.INT, 9, "targets per source image: all other classes up to this count, "
          "else a seeded sample of this many", minimum=1, maximum=1000),
    Param("targeted_fraction", ParamKind.FLOAT, 1.0, "share of the correctly classified images used as "
          "targeted sources (chosen by a seeded hash of the sample id)", minimum=1e-6, maximum=1.0),
    Param("suitability_margin", ParamKind.FLOAT, 0.1, "clean probability margin below which a source image "
          "is flagged as low-margin", minimum=0.0, maximum=1.0),
    Param("regional", ParamKind.BOOL, False, "run the regional-perturbation study (2e): the attack restricted "
          "to masks, beside the full-image attack"),
    Param("regional_shapes", ParamKind.CHOICE_LIST, [m.value for m in MaskShape], "mask shapes: centred square, "
          "border frame, seeded random pixels", choices=tuple(m.value for m in MaskShape)),
    Param("regional_fractions", ParamKind.FLOAT_LIST, [0.17, 0.28, 0.45], "requested share of pixels per mask "
          "(the report gives the actual share the pixel grid allows)", minimum=1e-6, maximum=1.0, max_items=8),
    Param("regional_objective", ParamKind.CHOICE, Objective.SIGN_CE.value, "loss of the unbounded iterative "
          "regional attack", choices=tuple(o.value for o in Objective)),
    Param("regional_step", ParamKind.FLOAT, 0.01, "regional attack step: largest per-pixel change per step",
          minimum=1e-6, maximum=1.0),
    Param("regional_steps", ParamKind.INT, 50, "regional attack iteration cap", minimum=1, maximum=10_000),
    Param("regional_targeted", ParamKind.BOOL, True, "also run the regional study targeted, at one seeded "
          "target class per image"),
    Param("loss_comparison", ParamKind.BOOL, False, "run the loss comparison (2f): CE + L2 penalty, iterative "
          "FGSM and CW margin at one step size and iteration cap"),
    Param("loss_objectives", ParamKind.CHOICE_LIST, [o.value for o in Objective], "losses to compare",
          choices=tuple(o.value for o in Objective)),
    Param("loss_step", ParamKind.FLOAT, 0.01, "step size shared by every loss: largest per-pixel change per step",
          minimum=1e-6, maximum=1.0),
    Param("loss_steps", ParamKind.INT, 50, "iteration cap shared by every loss", minimum=1, maximum=10_000),
    Param("loss_penalty", ParamKind.FLOAT, 0.01, "c of the CE + c * ||delta||_2^2 objective", minimum=0.0,
          maximum=1e6),
    Param("surrogate", ParamKind.OBJECT, None, "transferability (2g): craft the attacks on this model and "
          "evaluate them on the audited one", nullable=True, schema=SURROGATE),
    Param("batch_size", ParamKind.INT, None, "images per attack batch (null: the model's automatic size)",
          minimum=1, maximum=65_536, nullable=True),
))


def eps_key(eps: float) -> str:
    """A path-safe key for a budget: 4 significant digits, the dot spelt ``p`` (0.03137 -> eps_0p03137)."""
    return "eps_" + f"{eps:.4g}".replace(".", "p").replace("-", "m").replace("+", "")


def fraction_key(fraction: float) -> str:
    """A path-safe key for a mask's requested pixel share: 0.17 -> f_0p17."""
    return "f_" + f"{fraction:.4g}".replace(".", "p").replace("-", "m").replace("+", "")


def budgets(params: dict[str, Any], norm: str) -> list[float]:
    return list(params[f"{norm}_eps"])


def attacks_for(params: dict[str, Any], norm: str) -> list[str]:
    """The requested attacks that support ``norm``, in request order."""
    from ...attacks import ATTACKS

    return [a for a in params["attacks"] if Norm(norm) in ATTACKS[a].supported_norms]


def check(params: dict[str, Any]) -> dict[str, Any]:
    """Cross-field checks: budgets that collide as keys, norms without an attack."""
    errors: dict[str, str] = {}
    for norm in params["norms"]:
        keys = [eps_key(e) for e in params[f"{norm}_eps"]]
        if len(set(keys)) != len(keys):
            errors[f"attacks.{norm}_eps"] = (f"budgets {params[f'{norm}_eps']} give the same key at 4 significant "
                                             "digits; make them differ more")
        if not attacks_for(params, norm):
            errors["attacks.attacks"] = f"no requested attack supports the {norm} norm; add fgsm or pgd"
    keys = [fraction_key(f) for f in params["regional_fractions"]]
    if len(set(keys)) != len(keys):
        errors["attacks.regional_fractions"] = "fractions must differ at 4 significant digits"
    sur = params["surrogate"]
    if sur is not None:
        if sur["model"] is None:
            errors["attacks.surrogate.model"] = ("give the surrogate's checkpoint path (over the API, a registered "
                                                 "model_id, which the service resolves)")
        if sur["card"] is not None and not isinstance(sur["card"], (str, dict)):
            errors["attacks.surrogate.card"] = "must be a path, a card object or null"
    if errors:
        raise SpecError("invalid parameters: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), errors=errors)
    return params
