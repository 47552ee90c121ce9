"""Parameters of the ``attacks`` suite (one definition; the API schema is built from it)."""

from __future__ import annotations

from typing import Any

from ...attacks import Norm
from ...errors import SpecError
from ...params import Param, ParamKind, ParamSchema

#: attacks the untargeted part (2a) may use; CW-L2 runs only under the L2 norm.
UNTARGETED_ATTACKS = ("fgsm", "pgd", "cw")
#: the order of strength used by the "weaker attack stronger" sanity flag
WEAKER_STRONGER = (("fgsm", "pgd"),)

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
    Param("batch_size", ParamKind.INT, None, "images per attack batch (null: the model's automatic size)",
          minimum=1, maximum=65_536, nullable=True),
))


def eps_key(eps: float) -> str:
    """A path-safe key for a budget: 4 significant digits, the dot spelt ``p`` (0.03137 -> eps_0p03137)."""
    return "eps_" + f"{eps:.4g}".replace(".", "p").replace("-", "m").replace("+", "")


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
    if errors:
        raise SpecError("invalid parameters: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), errors=errors)
    return params
