"""Part 2g: transferability. Craft the attacks on a surrogate model, evaluate them on the
audited one: transfer rate per norm, attack and budget, beside the surrogate's own success.

Only images both models classify correctly are attacked; the others are counted apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...classifier import Classifier
from ...errors import SpecError
from ...metrics import Unit, metric
from .common import Record, in_batches, seeds_for, share
from .params import attacks_for, budgets, eps_key
from .robustness import build


def load_surrogate(spec: dict[str, Any], target: Classifier) -> Classifier:
    """The surrogate classifier; SpecError when it cannot stand in for the audited model."""
    from ...models import load_classifier

    sur = load_classifier(spec["model"], spec["card"], device=target.device)
    problems = []
    if sur.num_classes != target.num_classes:
        problems.append(f"class count {sur.num_classes} (the audited model has {target.num_classes})")
    if tuple(sur.input_size) != tuple(target.input_size):
        problems.append(f"input size {list(sur.input_size)} (the audited model takes {list(target.input_size)})")
    if problems:
        raise SpecError("attacks.surrogate: the surrogate must match the audited model; it has "
                        + " and ".join(problems), errors={"attacks.surrogate": "; ".join(problems)})
    return sur


@torch.no_grad()
def _predict(clf: Classifier, x: torch.Tensor) -> torch.Tensor:
    return clf.logits(x).argmax(dim=1) if len(x) else torch.zeros(0, dtype=torch.long, device=x.device)


def run_transfer(clf: Classifier, surrogate: Classifier, x: torch.Tensor, y: torch.Tensor, ids: list[str],
                 attacked: torch.Tensor, params: dict[str, Any], seed: int, progress: Callable[[float], None]
                 ) -> dict[str, Record]:
    """Per sample: whether the surrogate gets it right, and per norm/attack/budget whether the
    surrogate's adversarial fooled the surrogate and the audited model."""
    sur_ok = _predict(surrogate, x).eq(y)
    both = attacked & sur_ok
    out: dict[str, Record] = {s: {"surrogate_correct": bool(ok), "attacked": bool(b)}
                              for s, ok, b in zip(ids, sur_ok.tolist(), both.tolist())}
    idx = both.nonzero().squeeze(1)
    xs, ys = x[idx], y[idx]
    sids = [ids[int(i)] for i in idx]
    jobs = [(n, a) for n in params["norms"] for a in attacks_for(params, n)]
    for s in sids:
        out[s]["results"] = {n: {} for n in params["norms"]}
    for j, (norm, name) in enumerate(jobs):
        attack = build(name, norm, params)
        eps = budgets(params, norm)

        def chunk(start: int, stop: int, attack: Any = attack, eps: list[float] = eps, name: str = name,
                  norm: str = norm) -> list[tuple[list[bool], list[bool]]]:
            res = attack(surrogate, xs[start:stop], ys[start:stop], eps,
                         rng=seeds_for(seed, sids[start:stop], f"transfer:{norm}:{name}"))
            fooled = torch.stack([_predict(clf, a).ne(ys[start:stop]) for a in res.adversarials])  # budgets x n
            return [(res.success[:, k].tolist(), fooled[:, k].tolist()) for k in range(stop - start)]

        rows = [r for part in in_batches(clf, len(sids), params["batch_size"], chunk) for r in part]
        for sid, (on_sur, on_target) in zip(sids, rows):
            out[sid]["results"][norm][name] = {"surrogate": [bool(v) for v in on_sur],
                                               "target": [bool(a and b) for a, b in zip(on_sur, on_target)]}
        progress((j + 1) / max(1, len(jobs)))
    return out


def transfer_metrics(records: list[Record], params: dict[str, Any]) -> dict[str, Any]:
    """transfer.{not_attacked, norm.attack.eps.{transfer_rate, surrogate_success, target_fooled}}"""
    recs = [r["transfer"] for r in records]
    done = [t for t in recs if t["attacked"]]
    out: dict[str, Any] = {
        "not_attacked": metric(len(recs) - len(done), Unit.COUNT, len(recs),
                               "samples misclassified by the audited model or by the surrogate on the clean image: "
                               "not attacked, not counted as transfers"),
    }
    for norm in params["norms"]:
        out[norm] = {}
        for a in attacks_for(params, norm):
            out[norm][a] = {}
            for b, e in enumerate(budgets(params, norm)):
                on_sur = [t["results"][norm][a]["surrogate"][b] for t in done]
                on_tgt = [t["results"][norm][a]["target"][b] for t in done]
                moved = [g for s, g in zip(on_sur, on_tgt) if s]
                cond = f"{a}, {norm} eps={e:g}"
                out[norm][a][eps_key(e)] = {
                    "transfer_rate": metric(share(moved), Unit.FRACTION, len(moved),
                                            f"share of the surrogate's successful adversarials that also fool the "
                                            f"audited model ({cond})", eps=e, attack=a),
                    "surrogate_success": metric(share(on_sur), Unit.FRACTION, len(on_sur),
                                                f"share of attacked samples the attack fools on the surrogate ({cond})",
                                                eps=e, attack=a),
                    "target_fooled": metric(share(on_tgt), Unit.FRACTION, len(on_tgt),
                                            f"share of attacked samples whose surrogate-crafted adversarial fools the "
                                            f"audited model ({cond})", eps=e, attack=a),
                }
    return out


def transfer_paths(params: dict[str, Any]) -> list[str]:
    paths = ["transfer.not_attacked"]
    for norm in params["norms"]:
        for a in attacks_for(params, norm):
            for e in budgets(params, norm):
                paths += [f"transfer.{norm}.{a}.{eps_key(e)}.{v}"
                          for v in ("transfer_rate", "surrogate_success", "target_fooled")]
    return paths
