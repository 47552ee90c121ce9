"""Running the unbounded iterative attack (parts 2e and 2f) and describing what it changed."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ...attacks import IterativeLoss
from ...classifier import Classifier
from ...metrics import Unit, metric, proportion
from .common import Record, in_batches, median, seeds_for

#: a pixel counts as changed (L0) when some channel moved by more than this
L0_TOLERANCE = 1e-6


def perturbation_norms(clean: torch.Tensor, adv: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """Per sample: L0 (share of pixels changed in any channel), L2 and L-inf of ``adv - clean``."""
    delta = (adv - clean).flatten(2)  # N x C x HW
    l0 = (delta.abs().amax(dim=1) > L0_TOLERANCE).double().mean(dim=1)
    return (l0.tolist(), delta.flatten(1).double().norm(dim=1).tolist(),
            delta.flatten(1).abs().amax(dim=1).double().tolist())


def run_iterative(clf: Classifier, attack: IterativeLoss, x: torch.Tensor, labels: torch.Tensor, ids: Sequence[str],
                  *, targeted: bool, mask: torch.Tensor | None, batch_size: int | None, seed: int, salt: str,
                  keep_first: bool = False) -> list[Record]:
    """One record per sample: success, iteration of first success, and the norms when it succeeded.
    With ``keep_first``, the first record also holds the first sample's image under ``"_adv"``."""
    def chunk(start: int, stop: int) -> list[Record]:
        xs = x[start:stop]
        res = attack(clf, xs, labels[start:stop], [1.0], targeted=targeted, mask=mask,
                     rng=seeds_for(seed, ids[start:stop], salt))
        assert res.first_success is not None
        l0, l2, linf = perturbation_norms(xs, res.adversarials[0])
        out: list[Record] = []
        for k, ok in enumerate(res.success[0].tolist()):
            out.append({"success": bool(ok), "iterations": int(res.first_success[0, k]) if ok else None,
                        "l0": l0[k] if ok else None, "l2": l2[k] if ok else None, "linf": linf[k] if ok else None})
        if keep_first and start == 0 and out:
            out[0]["_adv"] = res.adversarials[0][0]
        return out

    return [r for part in in_batches(clf, len(ids), batch_size, chunk) for r in part]


def outcome_metrics(runs: list[Record | None], what: str) -> dict[str, Any]:
    """Success rate and median norms of the successes, over the attacked samples' records."""
    done = [r for r in runs if r is not None]
    hits = [r for r in done if r["success"]]
    n, k = len(done), len(hits)
    out = {"success_rate": proportion(k / n if n else None, n, f"share of attacked samples fooled ({what})")}
    for key, unit, label in (("l0", Unit.FRACTION, f"share of pixels changed (a pixel counts when a channel moved "
                                                     f"by > {L0_TOLERANCE:g})"),
                             ("l2", Unit.L2, "L2 norm"), ("linf", Unit.LINF, "L-inf norm")):
        out[key] = metric(median([r[key] for r in hits]), unit, k,
                          f"median {label} of the successful perturbations ({what})")
    return out


def thumbnail(image: torch.Tensor, size: int = 32) -> list[list[float]]:
    """A C x H x W image as at most size x size values (max over channels and pooled cells),
    rounded: small enough to carry in a partial."""
    m = image.detach().abs().amax(dim=0)[None, None].double()
    h, w = m.shape[-2:]
    if h > size or w > size:
        m = torch.nn.functional.adaptive_max_pool2d(m, (min(h, size), min(w, size)))
    return [[round(float(v), 4) for v in row] for row in m[0, 0].tolist()]


def finite(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and math.isfinite(v)]
