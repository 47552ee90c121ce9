"""Parameters of the ``attacks`` suite (one definition; the API schema is built from it).

The attack parameters come from the registry: each attack's own ``params`` schema becomes one
nested object of ``attack_params`` (``{"pgd": {"steps": 20}, "square": {"n_queries": 1000}}``),
so adding an attack is one module in ``worker/engine/attacks`` plus its tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...attacks import ATTACKS, Attack, Norm
from ...errors import SpecError
from ...params import Param, ParamKind, ParamSchema
from ..keys import metric_key


@dataclass(frozen=True)
class AttackSet:
    """A named list of attacks, run in this order, with the parameter defaults the set implies.

    Args:
        attacks: registry names, in run order (with ``cascade`` each attacks only what is still robust).
        description: what the set is for and what it gives up.
        defaults: attack name -> parameters that replace the attack's own defaults when the request
            does not set them (e.g. a shorter Square for the cheap preset).
    """

    attacks: tuple[str, ...]
    description: str
    defaults: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


#: named sets the ``attacks`` parameter accepts beside attack names
ATTACK_SETS: dict[str, AttackSet] = {
    "autoattack": AttackSet(
        ("apgd-ce", "apgd-t", "fab-t", "square"),
        "AutoAttack's standard evaluation (Croce and Hein 2020): APGD-CE, APGD-T (DLR loss, top-9 targets), "
        "FAB-T and Square, each on what the previous ones left robust"),
    "fast": AttackSet(
        ("pgd", "fgsm", "square"),
        "cheap preset for CI: PGD-10 and FGSM, then a 300-query Square on what they left robust. Gives up "
        "APGD's adaptive step size and restarts, the targeted and minimum-norm attacks, and most of Square's "
        "query budget: it catches masked gradients but overestimates robust accuracy by a few points",
        {"pgd": {"steps": 10}, "square": {"n_queries": 300}}),
}
#: the default set: PGD, then FGSM (on PGD's survivors: the weaker-beats-stronger check), CW-L2,
#: and the gradient-free Square, so that masked gradients cannot pass for robustness
DEFAULT_ATTACKS = ["pgd", "fgsm", "cw", "square"]


def _attack_help(cls: type[Attack]) -> str:
    doc = (cls.__doc__ or "").strip().splitlines()
    return f"parameters of {cls.name!r}" + (f": {doc[0].strip()}" if doc else "")


#: one nested object per registered attack, from the attack's own schema
ATTACK_PARAMS = ParamSchema(tuple(Param(name, ParamKind.OBJECT, None, _attack_help(cls), schema=cls.params)
                                  for name, cls in ATTACKS.items()))

#: expectation over transformation for randomised models
EOT = ParamSchema((
    Param("enabled", ParamKind.JSON, "auto", '"auto" (when the randomized_model sanity flag fires on the shard), '
          "true or false"),
    Param("grad_samples", ParamKind.INT, 8, "draws of the model averaged per attack pass (k): the attack "
          "follows the expected logits", minimum=1, maximum=256),
    Param("passes", ParamKind.INT, 9, "passes that judge success (m): an adversarial counts when it fools "
          "the model in a strict majority of them", minimum=1, maximum=256),
))

#: the suite's own parameters (2a, misclassification, suitability, sanity); each part adds its
#: object (suite.py lists the parts)
CORE = ParamSchema((
    Param("norms", ParamKind.CHOICE_LIST, ["linf", "l2"], "threat models to evaluate",
          choices=tuple(n.value for n in Norm), max_items=2),
    Param("linf_eps", ParamKind.FLOAT_LIST, [1 / 255, 2 / 255, 4 / 255, 8 / 255],
          "L-inf budgets in [0, 1] pixel units", minimum=1e-6, maximum=1.0, max_items=16),
    Param("l2_eps", ParamKind.FLOAT_LIST, [0.25, 0.5, 1.0], "L2 budgets in [0, 1] pixel units",
          minimum=1e-6, maximum=1000.0, max_items=16),
    Param("attacks", ParamKind.CHOICE_LIST, DEFAULT_ATTACKS,
          "attacks whose worst case per sample gives robust accuracy, in run order: registry names and the "
          f"sets {sorted(ATTACK_SETS)} (an attack runs only under the norms it supports, e.g. cw: L2 only)",
          choices=tuple(ATTACKS) + tuple(ATTACK_SETS)),
    Param("cascade", ParamKind.BOOL, True, "each attack runs only on what the attacks before it left robust "
          "(AutoAttack's protocol; per_attack then gives robust accuracy after each attack); false runs "
          "every attack on every sample (per_attack: each attack alone)"),
    Param("attack_params", ParamKind.OBJECT, None, "parameters per attack, from each attack's own schema",
          schema=ATTACK_PARAMS),
    Param("eot", ParamKind.OBJECT, None, "expectation over transformation for randomised models", schema=EOT),
    Param("minimal", ParamKind.CHOICE, "fmn", "minimal-perturbation method: fast minimum-norm attack (its "
          "parameters under attack_params.fmn), or none",
          choices=("fmn", "none")),
    Param("suitability_margin", ParamKind.FLOAT, 0.1, "clean probability margin below which a source image "
          "is flagged as low-margin", minimum=0.0, maximum=1.0),
    Param("batch_size", ParamKind.INT, None, "images per attack batch (null: the model's automatic size)",
          minimum=1, maximum=65_536, nullable=True),
    Param("multilabel_success", ParamKind.BOOL, None, "with label sets: an adversarial whose class is another "
          "valid label of the image is not a success (robust accuracy is reported both ways, the multi-label "
          "one under multilabel.*); null: on when the dataset carries label sets", nullable=True),
))


#: parameters of the flat shape (before the parts had objects) -> where each lives now
MOVED: tuple[tuple[str, str], ...] = (
    ("targeted", "targeted.enabled"), ("targeted_norm", "targeted.norm"), ("targeted_eps", "targeted.eps"),
    ("targeted_steps", "targeted.steps"), ("max_targets", "targeted.max_targets"),
    ("targeted_fraction", "targeted.fraction"),
    ("regional", "regional.enabled"), ("regional_shapes", "regional.shapes"),
    ("regional_fractions", "regional.fractions"), ("regional_objective", "regional.objective"),
    ("regional_step", "regional.step"), ("regional_steps", "regional.steps"),
    ("regional_targeted", "regional.targeted"),
    ("loss_comparison", "loss_comparison.enabled"), ("loss_objectives", "loss_comparison.objectives"),
    ("loss_step", "loss_comparison.step"), ("loss_steps", "loss_comparison.steps"),
    ("loss_penalty", "loss_comparison.penalty"),
    ("surrogate", "transfer"),
)


def eps_key(eps: float) -> str:
    """The key of a budget (0.03137 -> eps_0p03137; users' gates name it)."""
    return metric_key("eps", eps)


def fraction_key(fraction: float) -> str:
    """The key of a mask's requested pixel share: 0.17 -> f_0p17."""
    return metric_key("f", fraction)


def budgets(params: Mapping[str, Any], norm: str) -> list[float]:
    return list(params[f"{norm}_eps"])


def expand(names: list[str]) -> list[str]:
    """Attack names with every set replaced by its attacks, in order, each once."""
    out: list[str] = []
    for name in names:
        for a in ATTACK_SETS[name].attacks if name in ATTACK_SETS else (name,):
            if a not in out:
                out.append(a)
    return out


def attacks_for(params: Mapping[str, Any], norm: str) -> list[str]:
    """The requested attacks (sets expanded) that support ``norm``, in run order."""
    return [a for a in expand(params["attacks"]) if a in ATTACKS and Norm(norm) in ATTACKS[a].supported_norms]


def gradient_free(name: str) -> bool:
    return bool(ATTACKS[name].gradient_free)


def with_set_defaults(raw: Mapping[str, Any] | None) -> dict[str, Any]:
    """The raw request with the attack parameters that its named sets imply, where it sets none itself."""
    out = dict(raw or {})
    names = out.get("attacks")
    if not isinstance(names, list):
        return out
    implied: dict[str, dict[str, Any]] = {}
    for name in names:
        if isinstance(name, str) and name in ATTACK_SETS:
            for attack, values in ATTACK_SETS[name].defaults.items():
                implied.setdefault(attack, {}).update(values)
    given = out.get("attack_params")
    if not implied or (given is not None and not isinstance(given, Mapping)):
        return out
    merged = {k: dict(v) if isinstance(v, Mapping) else v for k, v in (given or {}).items()}
    for attack, values in implied.items():
        if attack in merged and not isinstance(merged[attack], Mapping):
            continue  # the schema reports it
        merged[attack] = {**values, **merged.get(attack, {})}
    out["attack_params"] = merged
    return out


def check(params: dict[str, Any]) -> dict[str, Any]:
    """Cross-field checks of the core: budgets that collide as keys, norms without an attack, the EoT switch."""
    errors: dict[str, str] = {}
    missing = [a for a in expand(params["attacks"]) if a not in ATTACKS]
    if missing:
        errors["attacks.attacks"] = f"the set names attacks that are not registered: {missing}"
    for norm in params["norms"]:
        keys = [eps_key(e) for e in params[f"{norm}_eps"]]
        if len(set(keys)) != len(keys):
            errors[f"attacks.{norm}_eps"] = (f"budgets {params[f'{norm}_eps']} give the same key at 4 significant "
                                             "digits; make them differ more")
        if not attacks_for(params, norm):
            errors["attacks.attacks"] = f"no requested attack supports the {norm} norm; add fgsm or pgd"
    if params["eot"]["enabled"] not in ("auto", True, False):
        errors["attacks.eot.enabled"] = 'must be "auto", true or false'
    if errors:
        raise SpecError("invalid parameters: " + "; ".join(f"{k}: {v}" for k, v in errors.items()), errors=errors)
    return params
