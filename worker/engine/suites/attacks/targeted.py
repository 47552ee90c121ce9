"""Part 2b: targeted attacks on all (source, target) pairs -- the modify / mimic study.

Modify rate of a class: share of its images' targeted attempts that succeed (how easily its
images are moved anywhere). Mimic rate of a class: share of attempts aimed at it that succeed
(how easily anything is made to look like it).

Which classes are targets (``targets``): every other class of the model suits a sample that
covers the model's classes; on a model with many classes and a sample of few (5 photo classes,
1000 ImageNet classes) random targets are almost never a class of the sample, so each rate
rests on one or two attempts and no class has both rates. ``auto`` then takes the targets among
the classes present in the whole sample (:class:`~worker.engine.samples.Population`, the same in
every shard), and the report says so.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch

from ...attacks import AttackResult, Norm
from ...attacks.rng import sample_seed
from ...humanize import fmt_num
from ...metrics import Unit, metric, proportion
from ...params import Param, ParamKind, ParamSchema
from ..base import Warning_
from ..parts import Part, PartResult
from .common import Final, Record, Sample, Shard, in_batches, seeds_for, spearman
from .plots import modify_mimic_plot
from .robustness import build


class Targets(str, Enum):
    """Which classes a source image is attacked towards."""

    AUTO = "auto"  # PRESENT when the sample holds few of many classes, else ALL
    ALL = "all"  # every other class of the model (a seeded sample of max_targets when more)
    PRESENT = "present"  # every other class present in the sample (likewise)
    TOP_K = "top_k"  # the image's max_targets most likely other classes on the clean image


SCHEMA = ParamSchema((
    Param("enabled", ParamKind.BOOL, True, "run the targeted all-pairs (modify / mimic) study"),
    Param("norm", ParamKind.CHOICE, "linf", "norm of the targeted attack", choices=tuple(n.value for n in Norm)),
    Param("eps", ParamKind.FLOAT, 8 / 255, "budget of the targeted attack", minimum=1e-6, maximum=1000.0),
    Param("steps", ParamKind.INT, 20, "PGD steps of the targeted attack", minimum=1, maximum=10_000),
    Param("max_targets", ParamKind.INT, 9, "targets per source image: the candidate classes up to this count, "
          "else a seeded sample of this many (top_k: the k of the image's top-k)", minimum=1, maximum=1000),
    Param("fraction", ParamKind.FLOAT, 1.0, "share of the correctly classified images used as targeted "
          "sources (chosen by a seeded hash of the sample id)", minimum=1e-6, maximum=1.0),
    Param("targets", ParamKind.CHOICE, Targets.AUTO.value, "the candidate target classes: 'all' the model's "
          "other classes; 'present' the other classes present in the sample; 'top_k' the image's max_targets "
          "most likely other classes; 'auto' (default) 'present' when the sample holds at most half the model's "
          "classes and the model has more other classes than max_targets, else 'all'", enum=Targets),
))

#: a class's rate enters the rank correlation, the plot and easiest/hardest only on this many attempts
MIN_ATTEMPTS = 2
#: Spearman's rho over fewer classes is +-1 or undefined: it says nothing
MIN_RANKED_CLASSES = 3


def chosen_as_source(seed: int, sid: str, fraction: float) -> bool:
    """Seeded, shard-independent choice of targeted source images."""
    return fraction >= 1.0 or sample_seed(seed, "targeted-source", sid) / float(1 << 62) < fraction


def resolve_targets(mode: Targets | str, num_classes: int, present: int, max_targets: int) -> Targets:
    """The mode ``auto`` stands for, from facts every shard shares: ``present`` when the sample holds
    at most half the model's classes (at least two) and the model has more other classes than
    ``max_targets`` (the case where a seeded sample of all classes would miss the sample's own),
    else ``all``."""
    mode = Targets(mode)
    if mode is not Targets.AUTO:
        return mode
    few = 2 <= present and 2 * present <= num_classes and num_classes - 1 > max_targets
    return Targets.PRESENT if few else Targets.ALL


def targets_for(seed: int, sid: str, label: int, num_classes: int, max_targets: int,
                among: Sequence[int] | None = None) -> list[int]:
    """The candidate classes (``among``, default every class) other than ``label``, up to
    ``max_targets``; else a seeded sample of that many (sorted)."""
    others = [c for c in (range(num_classes) if among is None else among) if c != label]
    if len(others) <= max_targets:
        return others
    return sorted(random.Random(sample_seed(seed, "targets", sid)).sample(others, max_targets))


def top_targets(logits: torch.Tensor, labels: torch.Tensor, k: int) -> list[list[int]]:
    """Each row's ``k`` most likely classes other than its label, by the clean logits (sorted)."""
    z = logits.float().clone()
    z[torch.arange(z.shape[0], device=z.device), labels] = -torch.inf
    k = min(k, z.shape[1] - 1)
    return [sorted(row) for row in z.topk(k, dim=1).indices.tolist()] if k > 0 else [[] for _ in range(z.shape[0])]


def run_targeted(inp: Shard) -> dict[str, Record]:
    """Per chosen source: its targets and whether each targeted attack succeeded."""
    clf, x, y, ids, seed, params = inp.clf, inp.x, inp.y, inp.ids, inp.seed, inp.params
    own = params["targeted"]
    sources = [i for i in inp.attacked.nonzero().squeeze(1).tolist()
               if chosen_as_source(seed, ids[i], own["fraction"])]
    present = inp.population.classes
    mode = resolve_targets(own["targets"], clf.num_classes, len(present), own["max_targets"])
    if mode is Targets.TOP_K and sources:
        chosen = top_targets(clf.logits(x[sources]), y[sources], own["max_targets"])
    else:
        among = present if mode is Targets.PRESENT else None
        chosen = [targets_for(seed, ids[i], int(y[i]), clf.num_classes, own["max_targets"], among) for i in sources]
    pairs = [(i, t) for i, targets in zip(sources, chosen) for t in targets]
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


@dataclass
class PairCounts:
    """Attempts and successes per (source class, target class) that was tried: sparse, so that a
    card with 100,000 classes costs what the pairs cost, not the square of the classes."""

    tries: Counter[tuple[int, int]] = field(default_factory=Counter)
    wins: Counter[tuple[int, int]] = field(default_factory=Counter)

    def classes(self) -> list[int]:
        """The classes that take part, as source or target, sorted."""
        return sorted({c for pair in self.tries for c in pair})

    def total(self) -> tuple[int, int]:
        return sum(self.tries.values()), sum(self.wins.values())

    def per_class(self, axis: int) -> tuple[Counter[int], Counter[int]]:
        """(attempts, successes) per source class (axis 0) or per target class (axis 1)."""
        tries: Counter[int] = Counter()
        wins: Counter[int] = Counter()
        for pair, t in self.tries.items():
            tries[pair[axis]] += t
            wins[pair[axis]] += self.wins[pair]
        return tries, wins


def pair_counts(records: list[Sample]) -> PairCounts:
    """Attempts and successes per (source, target) pair, from every source's targeted record."""
    out = PairCounts()
    for r in records:
        t = r.parts.get("targeted")
        if not t:
            continue
        for target, ok in zip(t["targets"], t["success"]):
            out.tries[r.label, int(target)] += 1
            out.wins[r.label, int(target)] += int(ok)
    return out


def _rates(counts: PairCounts, keys: list[list[int]], axis: int) -> list[tuple[float | None, int]]:
    """(rate, attempts) per group of classes ``keys``, summed over sources (axis 0) or targets (axis 1)."""
    tries, wins = counts.per_class(axis)
    out = []
    for members in keys:
        t = sum(tries[k] for k in members)
        w = sum(wins[k] for k in members)
        out.append((w / t if t else None, t))
    return out


def targeted_metrics(records: list[Sample], params: dict[str, Any], class_names: list[str],
                     hierarchy: dict[str, str]) -> dict[str, Any]:
    c = len(class_names)
    counts = pair_counts(records)
    total, won = counts.total()
    own = params["targeted"]
    eps, norm = own["eps"], own["norm"]
    cond = f"targeted PGD-{own['steps']}, {norm} eps={eps:g}"
    out: dict[str, Any] = {
        "success_rate": proportion(won / total if total else None, total,
                               f"share of (image, target) pairs that succeed, {cond}", eps=eps, norm=norm),
        **_summary(counts, class_names, [[k] for k in range(c)], "class", cond),
    }
    if hierarchy:
        groups = sorted(set(hierarchy.values()))
        members = [[k for k in range(c) if hierarchy.get(class_names[k]) == g] for g in groups]
        out["groups"] = _summary(counts, groups, members, "group", cond)
    return out


def _plural(kind: str, count: int) -> str:
    return kind if count == 1 else {"class": "classes"}.get(kind, kind + "s")


def measured(summary: Mapping[str, Any], min_attempts: int = MIN_ATTEMPTS) -> list[str]:
    """Names (classes or groups) whose modify and mimic rates each rest on ``min_attempts`` attempts:
    what the rank correlation and the plot use."""
    modify, mimic = summary.get("modify") or {}, summary.get("mimic") or {}
    return [k for k, leaf in modify.items() if k in mimic and leaf.get("value") is not None
            and mimic[k].get("value") is not None and leaf["n"] >= min_attempts and mimic[k]["n"] >= min_attempts]


def _summary(counts: PairCounts, names: list[str], members: list[list[int]], kind: str, cond: str
             ) -> dict[str, Any]:
    """Modify and mimic rates per class (or group), their rank correlation, easiest and hardest.

    The correlation and easiest/hardest count only rates on at least :data:`MIN_ATTEMPTS` attempts;
    where they are undefined the leaf's value is null and its ``note`` says why."""
    modify, mimic = _rates(counts, members, 0), _rates(counts, members, 1)
    kinds = _plural(kind, 2)
    out: dict[str, Any] = {
        "modify": {names[k]: proportion(r, t, f"modify rate of {kind} {names[k]!r}: share of its "
                                    f"images' targeted attempts that succeed ({cond})")
                   for k, (r, t) in enumerate(modify) if t},
        "mimic": {names[k]: proportion(r, t, f"mimic rate of {kind} {names[k]!r}: share of attempts "
                                   f"aimed at it that succeed ({cond})")
                  for k, (r, t) in enumerate(mimic) if t},
    }
    both = [k for k in range(len(names)) if modify[k][0] is not None and mimic[k][0] is not None
            and modify[k][1] >= MIN_ATTEMPTS and mimic[k][1] >= MIN_ATTEMPTS]
    note: dict[str, str] = {}
    rho = None
    if len(both) < MIN_RANKED_CLASSES:
        note["note"] = (f"undefined: {len(both)} {_plural(kind, len(both))} have modify and mimic rates on at "
                        f"least {MIN_ATTEMPTS} attempts each; a rank correlation needs {MIN_RANKED_CLASSES}")
    else:
        rho = spearman([modify[k][0] for k in both], [mimic[k][0] for k in both])  # type: ignore[misc]
        if rho is None:
            note["note"] = f"undefined: the modify or the mimic rates are equal for all {len(both)} {kinds}"
    out["spearman"] = metric(rho, Unit.CORRELATION, len(both),
                             f"Spearman rank correlation between modify and mimic rates over {kinds} with at "
                             f"least {MIN_ATTEMPTS} attempts on each side", **note)
    for label, rates in (("modify", modify), ("mimic", mimic)):
        out.update(_extremes(label, rates, names, kind))
    return out


def _extremes(label: str, rates: list[tuple[float | None, int]], names: list[str], kind: str) -> dict[str, Any]:
    """``easiest_to_<label>`` and ``hardest_to_<label>``: defined only when two classes (or groups)
    with enough attempts differ, so that the two name distinct classes; else null with a note."""
    have = [(r, k) for k, (r, t) in enumerate(rates) if r is not None and t >= MIN_ATTEMPTS]
    top = max(have, key=lambda v: (v[0], -v[1])) if have else None
    low = min(have, key=lambda v: (v[0], v[1])) if have else None
    note = ""
    if len(have) < 2:
        note = (f"undefined: {len(have)} {_plural(kind, len(have))} have a {label} rate on at least "
                f"{MIN_ATTEMPTS} attempts; 2 are needed")
    elif top is not None and low is not None and top[0] == low[0]:
        note = f"undefined: all {len(have)} {_plural(kind, 2)} have the same {label} rate ({fmt_num(top[0])})"
    out: dict[str, Any] = {}
    for name, pick in (("easiest", top), ("hardest", low)):
        extra: dict[str, Any] = {kind: names[pick[1]] if pick and not note else None}
        if note:
            extra["note"] = note
        out[f"{name}_to_{label}"] = proportion(
            pick[0] if pick and not note else None, rates[pick[1]][1] if pick and not note else 0,
            f"{'highest' if name == 'easiest' else 'lowest'} {label} rate over {_plural(kind, 2)} with at least "
            f"{MIN_ATTEMPTS} attempts; the {kind} is in '{kind}' (ties: the first {kind})", **extra)
    return out


def study_notes(metrics: Mapping[str, Any], mode: Targets, requested: Targets, present: int, num_classes: int,
                max_targets: int, sources: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The part's metadata (which targets, why, what was left out) and its warnings (``sources``:
    the images attacked as sources)."""
    ranked = measured(metrics)
    plot_note = None
    if len(ranked) < 2:
        plot_note = (f"modify/mimic plot left out: {len(ranked)} {_plural('class', len(ranked))} have modify and "
                     f"mimic rates on at least {MIN_ATTEMPTS} attempts each (2 needed)")
    meta: dict[str, Any] = {"targets": mode.value, "requested": requested.value, "classes_present": present,
                            "model_classes": num_classes, "min_attempts": MIN_ATTEMPTS,
                            "ranked_classes": len(ranked), "plot_note": plot_note}
    warnings: list[dict[str, Any]] = []
    if requested is Targets.AUTO and mode is Targets.PRESENT:
        warnings.append(Warning_(
            "targeted_targets_present",
            f"the sample holds {present} of the model's {num_classes} classes: targeted attacks aimed at the "
            f"other classes present (targeted.targets 'auto' chose 'present'), so that each class has a modify "
            f"and a mimic rate. Set targeted.targets to 'all' for a seeded sample of all {num_classes - 1} other "
            f"classes, or 'top_k' for each image's {max_targets} most likely other classes.",
            {"classes_present": present, "model_classes": num_classes, "targets": mode.value}).to_dict())
    skipped = [what for what, gone in (("the modify/mimic plot", plot_note is not None),
                                       ("Spearman's rho", len(ranked) < MIN_RANKED_CLASSES)) if gone]
    if skipped and sources:
        if mode is Targets.PRESENT:
            advice = ("sample more images per class" if present >= 2 else
                      "the sample holds one class: add classes to it, or set targeted.targets to 'top_k'")
        else:
            advice = ("set targeted.targets to 'present' (targets among the sample's classes) or sample more "
                      "images per class")
        warnings.append(Warning_(
            "targeted_few_attempts",
            f"{' and '.join(skipped)} left out: {len(ranked)} {_plural('class', len(ranked))} have modify and mimic "
            f"rates on at least {MIN_ATTEMPTS} attempts each ({MIN_RANKED_CLASSES} needed for a rank correlation, "
            f"2 for the plot); {advice}",
            {"ranked_classes": len(ranked), "min_attempts": MIN_ATTEMPTS, "targets": mode.value}).to_dict())
    return meta, warnings


def matrix_artifact(records: list[Sample], class_names: list[str]) -> dict[str, Any]:
    """The all-pairs matrix for the artifact, over the classes that take part (as source or target;
    their model indices in ``class_indices``): attempts, successes and rates (null: no attempt)."""
    counts = pair_counts(records)
    classes = counts.classes()
    tries = [[counts.tries[s, t] for t in classes] for s in classes]
    wins = [[counts.wins[s, t] for t in classes] for s in classes]
    rates = [[w / t if t else None for w, t in zip(wr, tr)] for wr, tr in zip(wins, tries)]
    return {"class_names": [class_names[k] for k in classes], "class_indices": classes, "rows": "source class",
            "columns": "target class", "attempts": tries, "successes": wins, "rates": rates}


def write_matrix(path: Any, matrix: dict[str, Any]) -> Any:
    """The matrix as .npz (integer counts, the class names and indices), for numpy users (numpy
    imported here: the engine runs with torch alone)."""
    import numpy as np

    k = len(matrix["class_indices"])
    with open(path, "wb") as fh:
        np.savez(fh, attempts=np.asarray(matrix["attempts"], dtype=np.int64).reshape(k, k),
                 successes=np.asarray(matrix["successes"], dtype=np.int64).reshape(k, k),
                 class_names=np.asarray(matrix["class_names"], dtype=str),
                 class_indices=np.asarray(matrix["class_indices"], dtype=np.int64))
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
        own, num_classes = self.own(inputs.params), inputs.ctx.classifier.num_classes
        metrics = targeted_metrics(records, inputs.params, inputs.class_names, inputs.hierarchy)
        present = len({r.label for r in records})  # every sample's label: the population the shards saw
        mode = resolve_targets(own["targets"], num_classes, present, own["max_targets"])
        sources = sum(1 for r in records if r.parts.get("targeted") is not None)
        meta, warnings = study_notes(metrics, mode, Targets(own["targets"]), present, num_classes,
                                     own["max_targets"], sources)
        matrix = matrix_artifact(records, inputs.class_names)
        path = store.path(suite, "targeted_matrix.json")
        path.write_text(json.dumps(matrix, indent=1))
        files = [store.relative(path), store.relative(write_matrix(store.path(suite, "targeted_matrix.npz"), matrix))]
        if meta["plot_note"] is None:
            files.append(store.relative(modify_mimic_plot(store.path(suite, "modify_mimic.png"), metrics,
                                                          MIN_ATTEMPTS)))
        return PartResult(metrics, files, warnings=warnings, extra=meta)
