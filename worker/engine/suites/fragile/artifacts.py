"""Files of the fragile suite: NPZ maps per image and r, PNG maps, and example pairs.

numpy and matplotlib are imported here, lazily, so that the engine runs with torch alone
until an artifact is written. Figures are drawn on ``matplotlib.figure.Figure`` with the
Agg canvas: no pyplot state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .params import FriType

FRI_TITLES = {FriType.LOOSE_SHIFT: "loose shift", FriType.STRICT_SHIFT: "strict shift",
              FriType.LOOSE_SHRINK: "loose shrink", FriType.STRICT_SHRINK: "strict shrink"}


def write_npz(path: Path, arrays: dict[str, torch.Tensor]) -> None:
    """Compressed NPZ of CPU tensors (int8 maps stay int8, confidences float32)."""
    import numpy as np

    data: dict[str, Any] = {k: v.detach().cpu().numpy() for k, v in arrays.items()}
    np.savez_compressed(path, **data)


def draw_maps(path: Path, maps: dict[FriType, torch.Tensor], confidence: torch.Tensor, *, title: str,
              source: torch.Tensor | None = None) -> None:
    """One PNG: the source image (when given) beside a panel per FRI map (three colours, with a
    legend) and the confidence map (colour bar), so a reader sees what the maps are of."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    colours = ["#2166ac", "#f0f0f0", "#b2182b"]  # -1, 0, +1
    cmap = ListedColormap(colours)
    panels = len(maps) + 1 + (source is not None)
    fig = Figure(figsize=(2.6 * panels, 3.2), dpi=80)
    axes = list(fig.subplots(1, panels, squeeze=False)[0])
    if source is not None:
        ax = axes.pop(0)
        ax.imshow(_as_picture(source).numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title("source image", fontsize=9)
        ax.set_axis_off()
    for ax, (kind, fri) in zip(axes, maps.items()):
        ax.imshow(fri.numpy(), cmap=cmap, vmin=-1.5, vmax=1.5, interpolation="nearest")
        ax.set_title(FRI_TITLES[kind], fontsize=9)
        ax.set_axis_off()
    ax = axes[-1]
    im = ax.imshow(confidence.numpy(), cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title("true-class confidence", fontsize=9)
    ax.set_axis_off()
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.legend(handles=[Patch(color=colours[2], label="+1: correct, a move/shrink makes it wrong"),
                        Patch(color=colours[0], label="-1: wrong, a move/shrink makes it right"),
                        Patch(color=colours[1], label="0: not fragile")],
               loc="lower center", ncols=3, fontsize=8, frameon=False)
    fig.suptitle(f"{title}; cell (i, j) = the region with top-left corner (i, j)", fontsize=10, parse_math=False)
    fig.savefig(path)


@dataclass(frozen=True)
class PairView:
    """One example pair ready to draw: the correct crop and its flipped neighbour."""

    kind: str  # "shift" or "shrink"
    correct_image: torch.Tensor  # C x H x W in [0, 1], as the model saw it
    correct_caption: str
    flipped_image: torch.Tensor
    flipped_caption: str


def _as_picture(img: torch.Tensor) -> torch.Tensor:
    img = img.detach().float().clamp(0, 1).cpu()
    return img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)


def draw_pairs(path: Path, pairs: list[PairView], *, title: str) -> None:
    """One PNG: a row per pair, the correctly classified crop left and the flipped one right."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.0, 3.0 * len(pairs) + 0.4), dpi=80)
    axes = fig.subplots(len(pairs), 2, squeeze=False)
    for row, pair in zip(axes, pairs):
        for ax, img, caption in ((row[0], pair.correct_image, pair.correct_caption),
                                 (row[1], pair.flipped_image, pair.flipped_caption)):
            ax.imshow(_as_picture(img).numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_title(caption, fontsize=8, parse_math=False)
            ax.set_axis_off()
    fig.suptitle(title, fontsize=10, parse_math=False)
    fig.savefig(path)
