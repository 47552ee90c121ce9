"""3b: accuracy under the ImageNet-C corruptions, per corruption and severity."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ...metrics import Unit, metric, proportion
from ...params import Param, ParamKind, ParamSchema
from ..parts import Part, PartResult
from .artifacts import corruption_grid
from .common import Final, Progress, Shard, mean, predictions
from .corruptions import CORRUPTIONS, CorruptionFamily, SampleRandom, corrupt, sample_seed

SCHEMA = ParamSchema((
    Param("enabled", ParamKind.BOOL, True, "run the common corruptions (ImageNet-C)"),
    Param("names", ParamKind.CHOICE_LIST, list(CORRUPTIONS), "corruptions to apply",
          choices=tuple(CORRUPTIONS), max_items=len(CORRUPTIONS)),
    Param("severities", ParamKind.INT_LIST, [1, 2, 3, 4, 5], "ImageNet-C severities", minimum=1, maximum=5,
          max_items=5),
    Param("examples", ParamKind.BOOL, True, "save the first sample under each corruption at severities 1, 3 "
          "and 5, with the model's class for each (one PNG per corruption family)"),
))

#: the severities an example row shows, whatever severities are measured
EXAMPLE_SEVERITIES = (1, 3, 5)


def units(params: Mapping[str, Any]) -> int:
    return len(params["names"]) * len(params["severities"]) if params["enabled"] else 0


def run(inp: Shard) -> dict[str, Any]:
    """Per sample id: corruption -> [correct at each requested severity]; the first sample of the audit
    also has "examples": its example PNGs."""
    ctx, samples, params = inp.ctx, inp.samples, inp.params["corruptions"]
    progress = Progress(inp.progress, units(params))
    clf = ctx.classifier
    x = samples.prepared(clf.card)
    labels = samples.labels.to(clf.device)
    out: dict[str, dict[str, Any]] = {sid: {} for sid in samples.ids}
    step = max(1, clf.batch.size)
    n = len(samples)
    for name in params["names"]:
        for severity in params["severities"]:
            hits: list[bool] = []
            for start in range(0, n, step):
                ids = samples.ids[start:start + step]
                rng = SampleRandom.from_seeds([sample_seed(ctx.seed, sid, name, severity) for sid in ids], clf.device)
                with torch.no_grad():
                    images = corrupt(x[start:start + step].to(clf.device), name, severity, rng)
                    hits.extend(predictions(clf, images).eq(labels[start:start + step]).tolist())
            for sid, ok in zip(samples.ids, hits):
                out[sid].setdefault(name, []).append(bool(ok))
            progress.step()
    first = samples.population.ids[0] if samples.population.ids else None
    if params["examples"] and first in out:  # one image per audit: only the shard holding the first sample draws it
        k = samples.ids.index(first)
        out[first]["examples"] = examples(inp, x[k:k + 1].to(clf.device), int(labels[k]), first, params["names"])
    return out


def examples(inp: Shard, image: torch.Tensor, label: int, sid: str, names: list[str]) -> list[str]:
    """The example PNGs of one image (1 x C x H x W on the model's device), one per corruption family;
    the corrupted images are the ones measured (the same per-sample random streams)."""
    ctx, clf = inp.ctx, inp.ctx.classifier
    rows: dict[CorruptionFamily, list[dict[str, Any]]] = {}
    with torch.no_grad():
        clean_pred = int(predictions(clf, image)[0])
        for name in names:
            images, preds = [_uint8(image[0])], [clean_pred]
            for severity in EXAMPLE_SEVERITIES:
                rng = SampleRandom.from_seeds([sample_seed(ctx.seed, sid, name, severity)], clf.device)
                corrupted = corrupt(image, name, severity, rng)
                images.append(_uint8(corrupted[0]))
                preds.append(int(predictions(clf, corrupted)[0]))
            rows.setdefault(CORRUPTIONS[name][0], []).append(
                {"name": name, "label": label, "images": images, "preds": preds})
    names_of = list(clf.card.class_names)
    files = []
    for family, family_rows in rows.items():
        path = ctx.artifacts.path(ctx.suite, f"corruption_examples_{family.value}.png")
        corruption_grid(family_rows, path, title=f"{family.value} corruptions of one image (true class: "
                        f"{_class(label, names_of)})", class_names=names_of, severities=EXAMPLE_SEVERITIES)
        files.append(ctx.artifacts.relative(path))
    return files


def _uint8(image: torch.Tensor) -> torch.Tensor:
    return (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def _class(index: int, names: list[str]) -> str:
    name = names[index] if 0 <= index < len(names) else str(index)
    return name if len(name) <= 24 else name[:23] + "…"


def metrics(records: dict[str, dict[str, list[bool]]], clean: Mapping[str, Any], params: Mapping[str, Any]
            ) -> dict[str, Any]:
    """Accuracy per corruption and severity, mean corruption error and the drop against clean."""
    ids = sorted(records)
    n = len(ids)
    sev = params["severities"]
    out: dict[str, Any] = {}
    errors: list[float] = []
    accs: list[float] = []
    clean_acc = mean(bool(clean[i]["correct"]) for i in ids if i in clean) if clean else None
    rel: list[float] = []
    for name in params["names"]:
        per: dict[str, Any] = {}
        sev_acc = []
        for j, s in enumerate(sev):
            acc = mean(records[i][name][j] for i in ids)
            per[f"s{s}"] = proportion(acc, n, f"top-1 accuracy under {name} at severity {s}",
                                  corruption=name, severity=s)
            if acc is not None:
                sev_acc.append(acc)
        m = mean(sev_acc)
        per["mean"] = metric(m, Unit.FRACTION, n, f"top-1 accuracy under {name}, averaged over severities {sev}")
        err = None if m is None else 1.0 - m
        per["error"] = metric(err, Unit.FRACTION, n, f"top-1 error under {name}, averaged over severities {sev} "
                              "(ImageNet-C's CE before the AlexNet normalisation)")
        out[name] = per
        if err is not None:
            errors.append(err)
            accs.extend(sev_acc)
            if clean_acc is not None:
                rel.append(err - (1.0 - clean_acc))
    mce = mean(errors)
    out["mce"] = metric(mce, Unit.FRACTION, n, "mean corruption error: the mean over corruptions of the error "
                        "averaged over severities; unnormalised (ImageNet-C divides each corruption's error by "
                        "AlexNet's, which has no counterpart for an arbitrary model and dataset)",
                        corruptions=len(errors))
    out["relative_mce"] = metric(mean(rel), Unit.FRACTION, n, "mean over corruptions of (corruption error - clean "
                                 "error), unnormalised relative mCE")
    mean_acc = mean(accs)
    out["mean_accuracy"] = metric(mean_acc, Unit.FRACTION, n, "top-1 accuracy averaged over every corruption "
                                  "and severity")
    out["clean"] = proportion(clean_acc, n, "top-1 accuracy of the same samples uncorrupted")
    drop = None if clean_acc is None or mean_acc is None else clean_acc - mean_acc
    out["drop"] = metric(drop, Unit.FRACTION, n, "clean accuracy minus mean corrupted accuracy")
    out["relative_drop"] = metric(None if drop is None or not clean_acc else drop / clean_acc, Unit.RATIO, n,
                                  "drop divided by the clean accuracy")
    return out


def metric_paths(params: Mapping[str, Any]) -> list[str]:
    """Paths below ``corruptions.``."""
    paths = []
    for name in params["names"]:
        paths += [f"{name}.s{s}" for s in params["severities"]]
        paths += [f"{name}.mean", f"{name}.error"]
    return paths + ["mce", "relative_mce", "mean_accuracy", "clean", "drop", "relative_drop"]


class CorruptionsPart(Part[Shard, Final]):
    """3b: accuracy under the ImageNet-C corruptions."""

    name = "corruptions"
    help = "3b: common corruptions"
    schema = SCHEMA

    def units(self, params: Mapping[str, Any]) -> int:
        return units(self.own(params))

    def metric_paths(self, params: Mapping[str, Any]) -> list[str]:
        return metric_paths(self.own(params))

    def run(self, inputs: Shard) -> dict[str, Any]:
        return run(inputs)

    def finalize(self, inputs: Final, partial: Any) -> PartResult:
        files = [f for record in partial.values() for f in record.get("examples", [])]
        return PartResult(metrics(partial, inputs.ctx.shared.get("clean", {}), self.own(inputs.params)), files)
