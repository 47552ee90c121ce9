"""Part 2b: targeted attacks on all (source, target) pairs -- the modify / mimic study.

Modify rate of a class: share of its images' targeted attempts that succeed (how easily its
images are moved anywhere). Mimic rate of a class: share of attempts aimed at it that succeed
(how easily anything is made to look like it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from typing import Any

import torch

from ...attacks import AttackResult, Norm
from ...attacks.rng import sample_seed
from ...metrics import Unit, metric, proportion
from ...params import Param, ParamKind, ParamSchema
from ..parts import Part, PartResult
from .common import Final, Record, Sample, Shard, in_batches, seeds_for, spearman
from .plots import modify_mimic_plot
from .robustness import build

SCHEMA = ParamSchema((
    Param("enabled", ParamKind.BOOL, True, "run the targeted all-pairs (modify / mimic) study"),
    Param("norm", ParamKind.CHOICE, "linf", "norm of the targeted attack", choices=tuple(n.value for n in Norm)),
    Param("eps", ParamKind.FLOAT, 8 / 255, "budget of the targeted attack", minimum=1e-6, maximum=1000.0),
    Param("steps", ParamKind.INT, 20, "PGD steps of the targeted attack", minimum=1, maximum=10_000),
    Param("max_targets", ParamKind.INT, 9, "targets per source image: all other classes up to this count, "
          "else a seeded sample of this many", minimum=1, maximum=1000),
    Param("fraction", ParamKind.FLOAT, 1.0, "share of the correctly classified images used as targeted "
          "sources (chosen by a seeded hash of the sample id)", minimum=1e-6, maximum=1.0),
))


def chosen_as_source(seed: int, sid: str, fraction: float) -> bool:
    """Seeded, shard-independent choice of targeted source images."""
    return fraction >= 1.0 or sample_seed(seed, "targeted-source", sid) / float(1 << 62) < fraction


def targets_for(seed: int, sid: str, label: int, num_classes: int, max_targets: int) -> list[int]:
    """All other classes up to ``max_targets``, else a seeded sample of that many (sorted)."""
    others = [c for c in range(num_classes) if c != label]
    if len(others) <= max_targets:
        return others
    return sorted(random.Random(sample_seed(seed, "targets", sid)).sample(others, max_targets))


def run_targeted(inp: Shard) -> dict[str, Record]:
    """Per chosen source: its targets and whether each targeted attack succeeded."""
    clf, x, y, ids, seed, params = inp.clf, inp.x, inp.y, inp.ids, inp.seed, inp.params
    own = params["targeted"]
    sources = [i for i in inp.attacked.nonzero().squeeze(1).tolist()
               if chosen_as_source(seed, ids[i], own["fraction"])]
    pairs: list[tuple[int, int]] = []
    for i in sources:
        pairs += [(i, t) for t in targets_for(seed, ids[i], int(y[i]), clf.num_classes, own["max_targets"])]
    out: dict[str, Record] = {ids[i]: {"targets": [], "success": []} for i in sources}
    if not pairs:
        return out
    attack = build("pgd", own["norm"], params, steps=own["steps"])  # attack_params.pgd, own step count
    src = torch.tensor([p[0] for p in pairs], device=x.device)
    tgt = torch.tensor([p[1] for p in pairs], device=x.device)
    pair_ids = [f"{ids[i]}->{t}" for i, t in pairs]

    def chunk(start: int, stop: int) -> AttackResult:
        res = attack(clf, x[src[start:stop]], tgt[start:stop], [own["eps"]], targeted=True,
                     rng=seeds_for(seed, pair_ids[start:stop], "targeted"))
        inp.progress(stop / len(pairs))
        return res

    flags: list[bool] = []
    for res in in_batches(clf, len(pairs), params["batch_size"], chunk):
        flags += [bool(v) for v in res.success[0].tolist()]
    for (i, t), ok in zip(pairs, flags):
        out[ids[i]]["targets"].append(t)
        out[ids[i]]["success"].append(ok)
    return out


def pair_counts(records: list[Sample], num_classes: int) -> tuple[list[list[int]], list[list[int]]]:
    """Attempts and successes as source x target integer matrices."""
    tries = [[0] * num_classes for _ in range(num_classes)]
    wins = [[0] * num_classes for _ in range(num_classes)]
    for r in records:
        t = r.parts.get("targeted")
        if not t:
            continue
        for target, ok in zip(t["targets"], t["success"]):
            tries[r.label][target] += 1
            wins[r.label][target] += int(ok)
    return tries, wins


def _rates(tries: list[list[int]], wins: list[list[int]], keys: list[list[int]], axis: int
           ) -> list[tuple[float | None, int]]:
    """(rate, attempts) per group of classes ``keys``, summed over rows (axis 0) or columns (axis 1)."""
    out = []
    c = len(tries)
    for members in keys:
        if axis == 0:
            t = sum(tries[s][j] for s in members for j in range(c))
            w = sum(wins[s][j] for s in members for j in range(c))
        else:
            t = sum(tries[i][s] for s in members for i in range(c))
            w = sum(wins[i][s] for s in members for i in range(c))
        out.append((w / t if t else None, t))
    return out


def targeted_metrics(records: list[Sample], params: dict[str, Any], class_names: list[str],
                     hierarchy: dict[str, str]) -> dict[str, Any]:
    c = len(class_names)
    tries, wins = pair_counts(records, c)
    total = sum(map(sum, tries))
    own = params["targeted"]
    eps, norm = own["eps"], own["norm"]
    cond = f"targeted PGD-{own['steps']}, {norm} eps={eps:g}"
    out: dict[str, Any] = {
        "success_rate": proportion(sum(map(sum, wins)) / total if total else None, total,
                               f"share of (image, target) pairs that succeed, {cond}", eps=eps, norm=norm),
        **_summary(tries, wins, class_names, [[k] for k in range(c)], "class", cond),
    }
    if hierarchy:
        groups = sorted(set(hierarchy.values()))
        members = [[k for k in range(c) if hierarchy.get(class_names[k]) == g] for g in groups]
        out["groups"] = _summary(tries, wins, groups, members, "group", cond)
    return out


def _summary(tries: list[list[int]], wins: list[list[int]], names: list[str], members: list[list[int]],
             kind: str, cond: str) -> dict[str, Any]:
    """Modify and mimic rates per class (or group), their rank correlation, easiest and hardest."""
    modify, mimic = _rates(tries, wins, members, 0), _rates(tries, wins, members, 1)
    out: dict[str, Any] = {
        "modify": {names[k]: proportion(r, t, f"modify rate of {kind} {names[k]!r}: share of its "
                                    f"images' targeted attempts that succeed ({cond})")
                   for k, (r, t) in enumerate(modify) if t},
        "mimic": {names[k]: proportion(r, t, f"mimic rate of {kind} {names[k]!r}: share of attempts "
                                   f"aimed at it that succeed ({cond})")
                  for k, (r, t) in enumerate(mimic) if t},
    }
    both = [k for k in range(len(names)) if modify[k][0] is not None and mimic[k][0] is not None]
    rho = spearman([modify[k][0] for k in both], [mimic[k][0] for k in both])  # type: ignore[misc]
    out["spearman"] = metric(rho, Unit.CORRELATION, len(both),
                             f"Spearman rank correlation between modify and mimic rates over {kind}s")
    for label, rates in (("modify", modify), ("mimic", mimic)):
        have = [(r, k) for k, (r, t) in enumerate(rates) if r is not None]
        for name, pick in (("easiest", max(have, key=lambda v: (v[0], -v[1])) if have else None),
                           ("hardest", min(have, key=lambda v: (v[0], v[1])) if have else None)):
            out[f"{name}_to_{label}"] = proportion(
                pick[0] if pick else None, rates[pick[1]][1] if pick else 0,
                f"{'highest' if name == 'easiest' else 'lowest'} {label} rate; the {kind} is in '{kind}' "
                f"(ties: the first {kind})", **{kind: names[pick[1]] if pick else None})
    return out


def matrix_artifact(records: list[Sample], class_names: list[str]) -> dict[str, Any]:
    """The all-pairs matrix for the artifact: attempts, successes and rates (null: no attempt)."""
    tries, wins = pair_counts(records, len(class_names))
    rates = [[w / t if t else None for w, t in zip(wr, tr)] for wr, tr in zip(wins, tries)]
    return {"class_names": class_names, "rows": "source class", "columns": "target class",
            "attempts": tries, "successes": wins, "rates": rates}


def write_matrix(path: Any, matrix: dict[str, Any]) -> Any:
    """The matrix as .npz (integer counts and the class names), for numpy users (numpy imported
    here: the engine runs with torch alone)."""
    import numpy as np

    with open(path, "wb") as fh:
        np.savez(fh, attempts=np.asarray(matrix["attempts"], dtype=np.int64),
                 successes=np.asarray(matrix["successes"], dtype=np.int64),
                 class_names=np.asarray(matrix["class_names"]))
    return path


PATHS = ("success_rate", "modify.{class}", "mimic.{class}", "spearman", "easiest_to_modify", "hardest_to_modify",
         "easiest_to_mimic", "hardest_to_mimic")


class TargetedPart(Part[Shard, Final]):
    """2b: targeted PGD on (source, target) pairs; modify and mimic rates per class and group."""

    name = "targeted"
    help = "2b: the targeted all-pairs (modify / mimic) study"
    schema = SCHEMA

    def metric_paths(self, params: Mapping[str, Any]) -> list[str]:
        return list(PATHS) + ["groups." + p.replace("{class}", "{group}") for p in PATHS if p != "success_rate"]

    def run(self, inputs: Shard) -> dict[str, Record]:
        return run_targeted(inputs)

    def finalize(self, inputs: Final, partial: Any) -> PartResult:
        records, store, suite = inputs.records, inputs.ctx.artifacts, inputs.suite
        metrics = targeted_metrics(records, inputs.params, inputs.class_names, inputs.hierarchy)
        matrix = matrix_artifact(records, inputs.class_names)
        path = store.path(suite, "targeted_matrix.json")
        path.write_text(json.dumps(matrix, indent=1))
        files = [store.relative(path), store.relative(write_matrix(store.path(suite, "targeted_matrix.npz"), matrix))]
        if records:
            files.append(store.relative(modify_mimic_plot(store.path(suite, "modify_mimic.png"), metrics)))
        return PartResult(metrics, files)
