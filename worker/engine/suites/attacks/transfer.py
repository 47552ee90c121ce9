"""Part 2g: transferability. Craft the attacks on a surrogate model, evaluate them on the
audited one: transfer rate per norm, attack and budget, beside the surrogate's own success.

Only images both models classify correctly are attacked; the others are counted apart.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...classifier import Classifier
from ...errors import SpecError
from ...metrics import Unit, metric, proportion
from ...params import Param, ParamKind, ParamSchema
from ...samples import SampleSet
from ..parts import Part, PartResult
from .common import Final, Record, Sample, Shard, in_batches, seeds_for, share
from .params import attacks_for, budgets, eps_key
from .robustness import build

#: the surrogate model: a checkpoint path and its card, or (over the API) a registered model id
#: that the service replaces by the stored path and card. The part runs when a model is given.
SCHEMA = ParamSchema((
    Param("model", ParamKind.STR, None, "surrogate checkpoint path (the service fills it in from model_id); "
          "the transfer part runs when it is set", nullable=True),
    Param("card", ParamKind.JSON, None, "surrogate model card: a path, the card object, or null (the "
          "<stem>.card.json beside the checkpoint)", nullable=True),
    Param("model_id", ParamKind.STR, None, "API only: a registered model id; the service resolves it to the "
          "stored checkpoint and card", nullable=True),
))

#: loaded surrogates of this process, newest last: check_inputs and every shard share one load
_LOADED: OrderedDict[tuple[str, ...], Classifier] = OrderedDict()
_LOADED_MAX = 2
_LOCK = threading.Lock()


def _fingerprint(path: str, card: Any) -> tuple[str, str]:
    """(checkpoint sha256, card text): a file replaced under the same path is loaded afresh."""
    from ...models.loading import sha256_file

    digest = sha256_file(path) if Path(path).is_file() else "missing"
    if isinstance(card, str) and Path(card).is_file():
        return digest, Path(card).read_text(errors="replace")
    return digest, json.dumps(card, sort_keys=True, default=str)


def surrogate_model(path: str, card: Any, device: torch.device) -> Classifier:
    """The surrogate loaded once per process for this file, card and device (a small memo)."""
    from ...models import load_classifier

    key = (str(Path(path).resolve()), *_fingerprint(path, card), str(device))
    with _LOCK:
        if key in _LOADED:
            _LOADED.move_to_end(key)
            return _LOADED[key]
    sur = load_classifier(path, card, device=device)
    with _LOCK:
        _LOADED[key] = sur
        while len(_LOADED) > _LOADED_MAX:
            _LOADED.popitem(last=False)
    return sur


def load_surrogate(spec: Mapping[str, Any], target: Classifier) -> Classifier:
    """The surrogate classifier; SpecError when it cannot stand in for the audited model."""
    sur = surrogate_model(spec["model"], spec["card"], target.device)
    problems = []
    if sur.num_classes != target.num_classes:
        problems.append(f"class count {sur.num_classes} (the audited model has {target.num_classes})")
    if tuple(sur.input_size) != tuple(target.input_size):
        problems.append(f"input size {list(sur.input_size)} (the audited model takes {list(target.input_size)})")
    if problems:
        raise SpecError("attacks.transfer: the surrogate must match the audited model; it has "
                        + " and ".join(problems), errors={"attacks.transfer": "; ".join(problems)})
    return sur


@torch.no_grad()
def _predict(clf: Classifier, x: torch.Tensor) -> torch.Tensor:
    return clf.logits(x).argmax(dim=1) if len(x) else torch.zeros(0, dtype=torch.long, device=x.device)


def run_transfer(inp: Shard, surrogate: Classifier) -> dict[str, Record]:
    """Per sample: whether the surrogate gets it right, and per norm/attack/budget whether the
    surrogate's adversarial fooled the surrogate and the audited model."""
    clf, x, y, ids, params, seed = inp.clf, inp.x, inp.y, inp.ids, inp.params, inp.seed
    sur_ok = _predict(surrogate, x).eq(y)
    both = inp.attacked & sur_ok
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
        inp.progress((j + 1) / max(1, len(jobs)))
    return out


def transfer_metrics(records: list[Sample], params: Mapping[str, Any]) -> dict[str, Any]:
    """transfer.{not_attacked, norm.attack.eps.{transfer_rate, surrogate_success, target_fooled}}"""
    recs = [r.parts["transfer"] for r in records]
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
                    "transfer_rate": proportion(share(moved), len(moved),
                                            f"share of the surrogate's successful adversarials that also fool the "
                                            f"audited model ({cond})", eps=e, attack=a),
                    "surrogate_success": proportion(share(on_sur), len(on_sur),
                                                f"share of attacked samples the attack fools on the surrogate ({cond})",
                                                eps=e, attack=a),
                    "target_fooled": proportion(share(on_tgt), len(on_tgt),
                                            f"share of attacked samples whose surrogate-crafted adversarial fools the "
                                            f"audited model ({cond})", eps=e, attack=a),
                }
    return out


def transfer_paths(params: Mapping[str, Any]) -> list[str]:
    paths = ["not_attacked"]
    for norm in params["norms"]:
        for a in attacks_for(params, norm):
            for e in budgets(params, norm):
                paths += [f"{norm}.{a}.{eps_key(e)}.{v}"
                          for v in ("transfer_rate", "surrogate_success", "target_fooled")]
    return paths


class TransferPart(Part[Shard, Final]):
    """2g: attacks crafted on a surrogate model, evaluated on the audited one."""

    name = "transfer"
    help = "2g: transferability: craft the attacks on a surrogate model and evaluate them on the audited one"
    schema = SCHEMA

    def enabled(self, params: Mapping[str, Any]) -> bool:
        return self.own(params)["model"] is not None

    def check_params(self, params: Mapping[str, Any]) -> dict[str, str]:
        own = self.own(params)
        errors = {}
        if own["model"] is None and (own["card"] is not None or own["model_id"] is not None):
            errors["model"] = ("give the surrogate's checkpoint path (over the API, a registered model_id, which "
                               "the service resolves)")
        if own["card"] is not None and not isinstance(own["card"], (str, dict)):
            errors["card"] = "must be a path, a card object or null"
        return errors

    def check_inputs(self, params: Mapping[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        load_surrogate(self.own(params), classifier)

    def metric_paths(self, params: Mapping[str, Any]) -> list[str]:
        return transfer_paths(params)

    def run(self, inputs: Shard) -> dict[str, Record]:
        return run_transfer(inputs, load_surrogate(self.own(inputs.params), inputs.clf))

    def finalize(self, inputs: Final, partial: Any) -> PartResult:
        return PartResult(transfer_metrics(inputs.records, inputs.params))
