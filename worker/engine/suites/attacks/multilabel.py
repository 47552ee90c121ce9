"""Multi-label success (``multilabel_success``): an adversarial whose class is another valid label of
the image is not a success (after Anzaku et al., arXiv 2412.18409).

With label sets, robust accuracy is reported both ways: the single-label figures stay where they
are (``robust_accuracy.*``), the multi-label ones go under ``multilabel.robust_accuracy.*``. A
sample counts as multi-label robust at a budget when its clean class is in its set and no attack
of the set found, within the budget, an adversarial whose class is outside the set. Images with
an empty set are left out (``multilabel.empty_sets``).

Which samples are attacked for it:

* those correct under the single label: the core run (:func:`.robustness.run_untargeted` with the
  sets), whose cascade keeps a sample while its adversarials stay inside the set;
* those whose clean class is another valid label (wrong under the single label, right under the
  set): an extra run of the same attacks (no minimal-norm method) away from that clean class,
  kept per sample under ``Sample.multilabel``.

The attacks themselves still aim away from one class and stop when they leave it; a set-aware
loss is not implemented (docs/suites/attacks.md says what this means).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ...attacks.eot import EoT
from ...classifier import Classifier
from ...errors import SpecError
from ...metrics import Unit, metric, proportion
from ...samples import SampleSet
from .common import Record, Sample, share
from .params import attacks_for, budgets, eps_key
from .robustness import CostTable, run_untargeted

KEY = "multilabel_success"


def switched_on(params: Mapping[str, Any], has_sets: bool) -> bool:
    """True, False, or (null, the default) whether the dataset carries label sets."""
    value = params.get(KEY)
    return has_sets if value is None else bool(value)


def check_inputs(params: Mapping[str, Any], samples: SampleSet) -> None:
    if params.get(KEY) is True and samples.label_sets is None:
        raise SpecError(f"attacks.{KEY} is true but the dataset carries no label sets (an npz 'label_sets' "
                        "array or a 'label_sets' file in the dataset reference)",
                        errors={f"attacks.{KEY}": "the dataset has no label sets"})


def metric_paths(params: Mapping[str, Any]) -> list[str]:
    """The multi-label paths, unless the request switched them off (they exist only with label sets)."""
    if params.get(KEY) is False:
        return []
    paths = [f"multilabel.robust_accuracy.{norm}.{eps_key(e)}" for norm in params["norms"]
             for e in budgets(params, norm)]
    return paths + ["multilabel.empty_sets"]


def sets_by_id(samples: SampleSet) -> dict[str, frozenset[int]]:
    assert samples.label_sets is not None
    return {sid: frozenset(s) for sid, s in zip(samples.ids, samples.label_sets)}


def run_valid_alternatives(clf: Classifier, x: torch.Tensor, ids: Sequence[str], records: Mapping[str, Sample],
                           sets: Mapping[str, frozenset[int]], params: dict[str, Any], seed: int,
                           progress: Callable[[float], None], eot: EoT | None) -> CostTable | None:
    """Attack the samples whose clean class is a valid label other than theirs, away from that class;
    each such record gets ``multilabel`` (per norm: success and class per attack and budget). None
    when there are none."""
    pick = [i for i, sid in enumerate(ids) if not records[sid].correct and records[sid].topk[0] in sets[sid]]
    if not pick:
        return None
    index = torch.tensor(pick, dtype=torch.long, device=x.device)
    chosen = [ids[i] for i in pick]
    clean_class = torch.tensor([records[sid].topk[0] for sid in chosen], dtype=torch.long, device=x.device)
    out, cost = run_untargeted(clf, x[index], clean_class, chosen,
                               torch.ones(len(chosen), dtype=torch.bool, device=x.device),
                               {**params, "minimal": "none"}, seed, progress, eot, label_sets=sets)
    for sid in chosen:
        records[sid].multilabel = out[sid]
    return cost


def robust_flags(r: Sample, norm: str, n_eps: int, names: list[str]) -> list[bool]:
    """Per budget: the clean class is valid and no adversarial left the sample's set."""
    valid = frozenset(r.label_set or ())
    if not r.topk or r.topk[0] not in valid:
        return [False] * n_eps
    run: Record | None = r.attacks[norm] if r.correct else (r.multilabel or {}).get(norm)
    if run is None or run["success"] is None:
        return [False] * n_eps
    return [not any(run["success"][a][b] and run["preds"][a][b] not in valid for a in names) for b in range(n_eps)]


def multilabel_metrics(records: list[Sample], params: Mapping[str, Any]) -> dict[str, Any]:
    """``multilabel.robust_accuracy.{norm}.{eps}`` and ``multilabel.empty_sets``."""
    scored = [r for r in records if r.label_set]
    robust: dict[str, Any] = {}
    for norm in params["norms"]:
        eps = budgets(params, norm)
        names = attacks_for(params, norm)
        flags = [robust_flags(r, norm, len(eps), names) for r in scored]
        robust[norm] = {eps_key(e): proportion(share([f[b] for f in flags]), len(scored),
                                               f"multi-label robust accuracy under {norm} eps={e:g}: share of "
                                               f"images (non-empty label set) whose clean class is valid and that "
                                               f"no attack of {names} moved outside the set", eps=e, attacks=names,
                                               better="higher")
                        for b, e in enumerate(eps)}
    return {"robust_accuracy": robust,
            "empty_sets": metric(len(records) - len(scored), Unit.COUNT, len(records),
                                 "images whose label set is empty: left out of multilabel.robust_accuracy",
                                 better="neither")}
