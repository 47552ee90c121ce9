"""PNG grids of examples: the unperturbed image beside the perturbed one, with predictions.

matplotlib is imported here only, lazily, with a non-interactive backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...humanize import fmt_num


def example_grid(examples: list[dict[str, Any]], path: Path, *, title: str, class_names: list[str]) -> None:
    """One row per example: original (true class) | perturbed (predicted class, eps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = len(examples)
    fig, axes = plt.subplots(rows, 2, figsize=(4.0, 2.0 * rows + 0.4), squeeze=False)
    for r, ex in enumerate(examples):
        for c, key in enumerate(("original", "perturbed")):
            img = np.asarray(ex[key], dtype=np.uint8).transpose(1, 2, 0)
            ax = axes[r][c]
            if img.shape[2] == 1:
                ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=255)
            else:
                ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_title(f"{_name(ex['label'], class_names)} (original)", fontsize=8, parse_math=False)
            else:
                ax.set_title(f"-> {_name(ex['pred'], class_names)} (eps {fmt_num(ex['eps'])})", fontsize=8,
                             parse_math=False)
    fig.suptitle(title, fontsize=9, parse_math=False)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _name(index: int, names: list[str]) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


#: the pixels an example cell is drawn from at most (per side): enough to see a corruption, small on the page
EXAMPLE_PIXELS = 96


def corruption_grid(rows: list[dict[str, Any]], path: Path, *, title: str, class_names: list[str],
                    severities: tuple[int, ...]) -> Path:
    """One row per corruption: the clean image, then the image at each severity, each titled with
    the model's class for it (marked when it differs from the true class).

    ``rows``: ``{"name", "label", "images": [clean, s1, ...] as C x H x W uint8 tensors, "preds": [...]}``.
    Images are pooled to at most :data:`EXAMPLE_PIXELS` a side and drawn at 72 dpi, so one PNG
    stays a few hundred KiB whatever the model's input size (the page embeds it within its caps).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["clean"] + [f"severity {s}" for s in severities]
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.45 * len(columns), 1.55 * len(rows) + 0.5),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, (img, pred) in enumerate(zip(row["images"], row["preds"])):
            ax = axes[r][c]
            pixels = _small(img).permute(1, 2, 0).numpy()
            if pixels.shape[2] == 1:
                ax.imshow(pixels[..., 0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            else:
                ax.imshow(pixels, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            wrong = pred != row["label"]
            ax.set_title(f"{'x ' if wrong else ''}{_short(_name(pred, class_names))}", fontsize=7,
                         color="#c62828" if wrong else "black", parse_math=False)
            if c == 0:
                ax.set_ylabel(row["name"].replace("_", " "), fontsize=7, parse_math=False)
            if r == 0:
                ax.text(0.5, 1.32, columns[c], transform=ax.transAxes, ha="center", fontsize=7, parse_math=False)
    fig.suptitle(title, fontsize=8, parse_math=False)
    fig.tight_layout()
    fig.savefig(path, dpi=72, metadata={"Software": None})
    plt.close(fig)
    return path


def _small(img: Any) -> Any:
    """A C x H x W uint8 tensor pooled (area) to at most EXAMPLE_PIXELS a side."""
    import torch
    import torch.nn.functional as F

    h, w = img.shape[-2:]
    scale = EXAMPLE_PIXELS / max(h, w)
    if scale >= 1:
        return img
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(img[None].float(), size=size, mode="area")[0].round().clamp(0, 255).to(torch.uint8)


def _short(text: str, chars: int = 16) -> str:
    return text if len(text) <= chars else text[:chars - 1] + "…"
