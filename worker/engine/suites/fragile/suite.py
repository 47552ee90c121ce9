"""Suite ``fragile`` (docs/suites/fragile.md): fragile recognition images.

Per shard: for each region fraction r, every image's C_l and C_{l-2} crops are classified in
"waves" of whole images (full batches across image and side boundaries, one host transfer
per wave); the FRI maps follow from the correctness maps by tensor operations. The partial
keeps integer counts per image, so shards merge exactly; means, medians and bootstrap
intervals over images are computed once, in :meth:`FragileSuite.finalize`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ...batching import BatchSize
from ...classifier import Classifier
from ...errors import SpecError
from ...metrics import Unit, metric
from ...samples import SampleSet, match_channels
from ..base import Partial, Suite, SuiteContext, SuiteResult, Warning_
from .artifacts import PairView, draw_maps, draw_pairs, write_npz
from .crops import CropResizer
from .maps import fri_maps, sign_counts
from .pairs import Pair, choose_pairs
from .params import PARAMS, FriType, Interpolation, r_key, region_side
from .scan import CropClassifier, ScanResult, Segment, autocast_dtype, channels_last_model
from .stats import bootstrap_indices, summary

#: crops classified between two host transfers (results of one wave stay on the device).
WAVE_CROPS = 1 << 21
SIGNS = ("overall", "positive", "negative")


def crop_count(side: int, height: int, width: int) -> int:
    """Crops of C_l plus C_{l-2} for one image (0 when l < 3: that r is skipped)."""
    if side < 3:
        return 0
    return (height - side + 1) * (width - side + 1) + (height - side + 3) * (width - side + 3)


def total_crops(region_fractions: Sequence[float], sizes: Sequence[tuple[int, int]]) -> int:
    """Crops an audit needs for images of ``sizes`` (H, W) at every r."""
    return sum(crop_count(region_side(r, h, w), h, w) for r in region_fractions for h, w in sizes)


def effective_top_k(params: dict[str, Any], num_classes: int) -> int:
    """k from the parameters, or the spec's default: 5 for >= 100 classes, else 1."""
    k = params["top_k"]
    return int(k) if k is not None else (5 if num_classes >= 100 else 1)


@dataclass(frozen=True)
class _Job:
    """One image at one r: the image's position in the shard and its region side l."""

    index: int
    side: int


class FragileSuite(Suite):
    """Fragile recognition images: regions whose classification flips when moved by one pixel or shrunk by two."""

    name = "fragile"
    description = ("Fragile recognition images: fraction of image regions whose classification flips when "
                   "the region is moved by one pixel or shrunk by two (loose/strict shift/shrink FRIs).")
    params = PARAMS
    headline = ("r*.region_accuracy.mean", "r*.loose_shift.overall.mean", "r*.strict_shift.overall.mean")
    demo_params = {"region_fractions": [0.7, 0.9], "example_pairs": 2}

    # -- validation ---------------------------------------------------------------------------
    def validate_params(self, raw: Any) -> dict[str, Any]:
        params = super().validate_params(raw)
        keys = [r_key(r) for r in params["region_fractions"]]
        if len(set(keys)) != len(keys):
            raise SpecError(f"fragile.region_fractions: {params['region_fractions']} give repeated metric keys "
                            f"{keys}; use fractions that differ at 4 significant digits")
        if params["antialias"] and params["interpolation"] is Interpolation.NEAREST:
            raise SpecError("fragile.antialias: antialiasing applies to bilinear and bicubic interpolation only; "
                            "set antialias to false or choose another interpolation")
        return params

    def check_inputs(self, params: dict[str, Any], samples: SampleSet, classifier: Classifier) -> None:
        """Refuse, before any crop is classified, a top-k that makes every crop correct or too many crops."""
        if params["top_k"] is not None and params["top_k"] >= classifier.num_classes:
            raise SpecError(f"fragile.top_k: {params['top_k']} is not below the model's {classifier.num_classes} "
                            "classes, so every crop would count as correct; choose a smaller top_k")
        sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in samples.images]
        count = total_crops(params["region_fractions"], sizes)
        if count > params["max_crops"]:
            raise SpecError(f"fragile: these {len(sizes)} images need {count:,} crops at region fractions "
                            f"{params['region_fractions']}, above fragile.max_crops={params['max_crops']:,}; "
                            "sample fewer images, use fewer or larger region fractions, or raise max_crops",
                            crops=count, max_crops=params["max_crops"])

    def metric_paths(self, params: dict[str, Any]) -> list[str]:
        stats = ("mean", "median", "ci95_low", "ci95_high")
        paths = ["crops", "crops_per_second"]
        for r in params["region_fractions"]:
            key = r_key(r)
            paths += [f"{key}.crops", f"{key}.crops_per_second"]
            paths += [f"{key}.region_accuracy.{s}" for s in stats]
            paths += [f"{key}.{t}.{sign}.{s}" for t in params["fri_types"] for sign in SIGNS for s in stats]
        return paths

    # -- one shard ----------------------------------------------------------------------------
    def run(self, ctx: SuiteContext, samples: SampleSet, params: dict[str, Any]) -> Partial:
        self.check_inputs(params, samples, ctx.classifier)
        clf = ctx.classifier
        device = clf.device
        _, out_h, out_w = clf.input_size
        resizer = CropResizer((out_h, out_w), mode=params["interpolation"],
                              antialias=params["antialias"], device=device)
        batch = BatchSize(params["batch_size"]) if params["batch_size"] else None
        k = effective_top_k(params, clf.num_classes)
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in samples.images]
        partial: Partial = {"k": k, "artifacts": [], "by_r": {}}
        progress = _Progress(ctx, total_crops(params["region_fractions"], sizes))
        with channels_last_model(clf, params["channels_last"] and device.type == "cuda") as cl_applied:
            scanner = CropClassifier(clf, resizer, top_k=k, channels_last=cl_applied, batch=batch,
                                     autocast=autocast_dtype(params["precision"], device))
            for r in params["region_fractions"]:
                partial["by_r"][r_key(r)] = self._run_r(ctx, params, samples, sizes, r, scanner, progress,
                                                        partial["artifacts"])
        return partial

    def _run_r(self, ctx: SuiteContext, params: dict[str, Any], samples: SampleSet,
               sizes: list[tuple[int, int]], r: float, scanner: CropClassifier, progress: _Progress,
               artifacts: list[str]) -> dict[str, Any]:
        """Counts of every image of the shard at one r, wave by wave; only a wave's images are on the device."""
        entry: dict[str, Any] = {"images": {}, "crops": 0, "seconds": 0.0, "skipped": []}
        jobs = []
        for i, (h, w) in enumerate(sizes):
            side = region_side(r, h, w)
            if side < 3:
                entry["skipped"].append(samples.ids[i])
            else:
                jobs.append(_Job(i, side))
        channels = ctx.classifier.input_size[0]
        device = ctx.classifier.device
        for wave in _waves(jobs, sizes):
            t0 = time.perf_counter()
            images = [match_channels(samples.images[job.index], channels).to(device, torch.float32) for job in wave]
            labels = [int(samples.labels[job.index]) for job in wave]
            segments = [seg for n, job in enumerate(wave) for seg in (Segment.of(n, job.side, *sizes[job.index]),
                                                                      Segment.of(n, job.side - 2, *sizes[job.index]))]
            result, offsets = scanner.scan(images, labels, segments, on_batch=progress.callback())
            result = ScanResult(result.correct.cpu(), result.confidence.cpu(), result.pred.cpu())
            entry["seconds"] += time.perf_counter() - t0
            count = sum(s.count for s in segments)
            entry["crops"] += count
            progress.done += count
            for n, job in enumerate(wave):
                sid = samples.ids[job.index]
                maps_l = result.segment(offsets[2 * n], segments[2 * n])
                maps_l2 = result.segment(offsets[2 * n + 1], segments[2 * n + 1])
                entry["images"][sid] = self._image(ctx, params, r, sid, job, images[n], labels[n], maps_l, maps_l2,
                                                   scanner.resizer, artifacts)
        return entry

    def _image(self, ctx: SuiteContext, params: dict[str, Any], r: float, sid: str, job: _Job,
               image: torch.Tensor, label: int, maps_l: tuple[torch.Tensor, ...],
               maps_l2: tuple[torch.Tensor, ...], resizer: CropResizer, artifacts: list[str]) -> dict[str, Any]:
        """Counts of one image at one r; writes its NPZ (and PNGs)."""
        correct_l, confidence_l, pred_l = maps_l
        correct_l2, _, pred_l2 = maps_l2
        fri = fri_maps(correct_l, correct_l2)
        stem = f"{_safe(sid)}_{r_key(r)}"
        npz = ctx.artifacts.path(self.name, f"{stem}.npz")
        write_npz(npz, {"correct_l": correct_l.to(torch.int8), "correct_l2": correct_l2.to(torch.int8),
                        "confidence_l": confidence_l.float(),
                        **{t.value: m for t, m in fri.items()},
                        "pred_l": pred_l.to(torch.int32), "pred_l2": pred_l2.to(torch.int32)})
        artifacts.append(ctx.artifacts.relative(npz))
        wanted: list[FriType] = params["fri_types"]
        if params["pngs"]:
            title = f"{sid} (label {self._class_name(ctx, label)}), r={r:g}, l={job.side}"
            png = ctx.artifacts.path(self.name, f"{stem}_maps.png")
            draw_maps(png, {t: fri[t] for t in wanted}, confidence_l, title=title, source=image)
            artifacts.append(ctx.artifacts.relative(png))
            pairs = choose_pairs(correct_l, correct_l2, fri[FriType.LOOSE_SHIFT], fri[FriType.LOOSE_SHRINK],
                                 job.side, params["example_pairs"])
            if pairs:
                views = self._pair_views(ctx, image, pairs, maps_l, maps_l2, resizer)
                path = ctx.artifacts.path(self.name, f"{stem}_pairs.png")
                draw_pairs(path, views, title=title)
                artifacts.append(ctx.artifacts.relative(path))
        counts = {t.value: list(sign_counts(m)) for t, m in fri.items() if t in wanted}
        return {"side": job.side, "cells": int(correct_l.numel()), "correct": int(correct_l.sum()), "fri": counts}

    def _pair_views(self, ctx: SuiteContext, image: torch.Tensor, pairs: list[Pair],
                    maps_l: tuple[torch.Tensor, ...], maps_l2: tuple[torch.Tensor, ...],
                    resizer: CropResizer) -> list[PairView]:
        """The two crops of each pair as the model saw them, captioned with both predictions."""
        views = []
        width = image.shape[-1]
        for pair in pairs:
            crops, captions = [], []
            for role, (top, left, side) in (("correct", pair.correct), ("flipped", pair.flipped)):
                q = top * (width - side + 1) + left
                crops.append(resizer.crops(image, side, q, q + 1)[0])
                _, confidence, pred = maps_l if side == pair.correct[2] else maps_l2
                how = "" if role == "correct" else ("moved 1 px, " if pair.kind == "shift" else "shrunk by 2, ")
                captions.append(f"{role}: pred {self._class_name(ctx, int(pred[top, left]))}\n{how}at ({top},{left}), "
                                f"side {side}, p_true {float(confidence[top, left]):.2f}")
            views.append(PairView(kind=pair.kind, correct_image=crops[0], correct_caption=captions[0],
                                  flipped_image=crops[1], flipped_caption=captions[1]))
        return views

    @staticmethod
    def _class_name(ctx: SuiteContext, index: int) -> str:
        names = ctx.classifier.card.class_names
        return repr(names[index]) if 0 <= index < len(names) else str(index)

    # -- merge and finalize -------------------------------------------------------------------
    def merge(self, a: Partial, b: Partial) -> Partial:
        by_r = {}
        for key in a["by_r"]:
            x, y = a["by_r"][key], b["by_r"][key]
            by_r[key] = {"images": {**x["images"], **y["images"]}, "crops": x["crops"] + y["crops"],
                         "seconds": x["seconds"] + y["seconds"], "skipped": x["skipped"] + y["skipped"]}
        return {"k": a["k"], "artifacts": a["artifacts"] + b["artifacts"], "by_r": by_r}

    def finalize(self, ctx: SuiteContext, partial: Partial, params: dict[str, Any]) -> SuiteResult:
        metrics: dict[str, Any] = {}
        warnings = []
        k = partial["k"]
        all_crops, all_seconds = 0, 0.0
        for r in params["region_fractions"]:
            key = r_key(r)
            entry = partial["by_r"][key]
            records = list(entry["images"].values())
            n = len(records)
            idx = bootstrap_indices(n, params["bootstrap"], ctx.generator(salt=int(round(r * 1e6))))
            extra = {"r": r, "top_k": k}
            group: dict[str, Any] = {
                "crops": metric(entry["crops"], Unit.COUNT, n, "crops classified (C_l and C_(l-2))", **extra),
                "crops_per_second": _rate(entry["crops"], entry["seconds"], n, extra),
                "region_accuracy": summary([rec["correct"] / rec["cells"] for rec in records], idx,
                                           f"fraction of l x l regions classified correctly (top-{k})", **extra),
            }
            for t in params["fri_types"]:
                fr = {"overall": [(rec["fri"][t][0] + rec["fri"][t][1]) / rec["cells"] for rec in records],
                      "positive": [rec["fri"][t][0] / rec["cells"] for rec in records],
                      "negative": [rec["fri"][t][1] / rec["cells"] for rec in records]}
                words = {"overall": "", "positive": " (+1: correct -> incorrect)",
                         "negative": " (-1: incorrect -> correct)"}
                group[t] = {sign: summary(fr[sign], idx, f"fraction of regions that are {t.replace('_', ' ')} "
                                                         f"FRIs{words[sign]}", **extra) for sign in SIGNS}
            metrics[key] = group
            all_crops += entry["crops"]
            all_seconds += entry["seconds"]
            if entry["skipped"]:
                warnings.append(Warning_(
                    "fragile_region_too_small",
                    f"r={r:g} skipped on {len(entry['skipped'])} image(s): the region side l = "
                    "2*floor(r*min(H,W)/2)+1 is below 3 there; use a larger r or larger images",
                    {"r": r, "images": len(entry["skipped"]), "sample_ids": entry["skipped"][:20]}).to_dict())
        n_images = len({sid for entry in partial["by_r"].values() for sid in entry["images"]})
        metrics["crops"] = metric(all_crops, Unit.COUNT, n_images, "crops classified over every r")
        metrics["crops_per_second"] = _rate(all_crops, all_seconds, n_images, {})
        return SuiteResult(metrics=metrics, artifacts=sorted(partial["artifacts"]), warnings=warnings)


def _rate(crops: int, seconds: float, n: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Crops per second of crop + resize + classify + host transfer; a timing, not an exact metric."""
    value = crops / seconds if seconds > 0 and crops else None
    return metric(value, Unit.PER_SECOND, n, "crops cut, resized and classified per second (wall clock; "
                  "excludes drawing artifacts)", timing=True, seconds=round(seconds, 6), **extra)


class _Progress:
    """Crops done in this shard, reported to the context (which raises if the audit was cancelled)."""

    def __init__(self, ctx: SuiteContext, total: int) -> None:
        self.ctx, self.total, self.done = ctx, max(1, total), 0

    def callback(self) -> Callable[[int], None]:
        """For one wave: ``n`` of its crops are done."""
        done = self.done
        return lambda n: self.ctx.progress((done + n) / self.total)


def _waves(jobs: list[_Job], sizes: Sequence[tuple[int, int]]) -> list[list[_Job]]:
    """Consecutive jobs grouped so that one wave holds at most WAVE_CROPS crops (or one image)."""
    waves: list[list[_Job]] = []
    current: list[_Job] = []
    count = 0
    for job in jobs:
        n = crop_count(job.side, *sizes[job.index])
        if current and count + n > WAVE_CROPS:
            waves.append(current)
            current, count = [], 0
        current.append(job)
        count += n
    if current:
        waves.append(current)
    return waves


def _safe(sample_id: str) -> str:
    """A sample id as a plain file name, distinct for distinct ids (shards of one audit write into
    one folder): ``rand:3`` -> ``rand_3``; an id the plain form cannot tell apart (``a/b.png``,
    ``a_b``) gets ``~`` and a digest of the id."""
    out = "".join(ch if ch.isalnum() or ch == "-" else "_" for ch in sample_id)
    if sample_id and all(ch.isalnum() or ch in "-:" for ch in sample_id):
        return out  # only ':' became '_': reversible
    return f"{out}~{hashlib.sha256(sample_id.encode()).hexdigest()[:8]}"



