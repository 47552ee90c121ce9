"""A plain reference implementation of the fragile suite's maps: Python loops over crops and cells.

It shares no code with the engine's batched path; it follows docs/suites/fragile.md literally.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from worker.engine.samples import match_channels


def naive_correctness(clf, image, label, side, *, k=1, mode="bilinear", antialias=False):
    """(correct, confidence, pred) as nested lists, one model call per crop."""
    _, out_h, out_w = clf.input_size
    _, h, w = image.shape
    correct, confidence, pred = [], [], []
    for i in range(h - side + 1):
        rows = ([], [], [])
        for j in range(w - side + 1):
            crop = image[None, :, i:i + side, j:j + side]
            kwargs = {} if mode == "nearest" else {"align_corners": False, "antialias": antialias}
            x = F.interpolate(crop, size=(out_h, out_w), mode=mode, **kwargs)
            with torch.no_grad():
                logits = clf(x)[0].float()
            rows[0].append(int(label in logits.topk(k).indices.tolist()))
            rows[1].append(float(torch.softmax(logits, dim=0)[label]))
            rows[2].append(int(logits.argmax()))
        for acc, row in zip((correct, confidence, pred), rows):
            acc.append(row)
    return correct, confidence, pred


def _sign(cell):
    return 1 if cell else -1


def naive_shift(c):
    rows, cols = len(c), len(c[0])
    loose = [[0] * cols for _ in range(rows)]
    strict = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        for j in range(cols):
            neighbours = [c[a][b] for a in range(i - 1, i + 2) for b in range(j - 1, j + 2)
                          if (a, b) != (i, j) and 0 <= a < rows and 0 <= b < cols]
            differ = [v != c[i][j] for v in neighbours]
            if any(differ):
                loose[i][j] = _sign(c[i][j])
            if neighbours and all(differ):
                strict[i][j] = _sign(c[i][j])
    return loose, strict


def naive_shrink(c, c2):
    rows, cols = len(c), len(c[0])
    loose = [[0] * cols for _ in range(rows)]
    strict = [[0] * cols for _ in range(rows)]
    for i in range(rows):
        for j in range(cols):
            differ = [c2[i + a][j + b] != c[i][j] for a in range(3) for b in range(3)]
            if any(differ):
                loose[i][j] = _sign(c[i][j])
            if all(differ):
                strict[i][j] = _sign(c[i][j])
    return loose, strict


def naive_image(clf, image, label, r, *, k=1, mode="bilinear", antialias=False):
    """Every map of one image at one r, or None when l < 3."""
    image = match_channels(image, clf.input_size[0])
    side = 2 * math.floor(r * min(image.shape[-2:]) / 2) + 1
    if side < 3:
        return None
    c, conf, pred = naive_correctness(clf, image, label, side, k=k, mode=mode, antialias=antialias)
    c2, _, pred2 = naive_correctness(clf, image, label, side - 2, k=k, mode=mode, antialias=antialias)
    loose_shift, strict_shift = naive_shift(c)
    loose_shrink, strict_shrink = naive_shrink(c, c2)
    return {"side": side, "correct_l": c, "correct_l2": c2, "confidence_l": conf, "pred_l": pred,
            "pred_l2": pred2, "loose_shift": loose_shift, "strict_shift": strict_shift,
            "loose_shrink": loose_shrink, "strict_shrink": strict_shrink}
