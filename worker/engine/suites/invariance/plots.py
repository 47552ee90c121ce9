"""The invariance suite's PNG artifact: each colliding pair x | x' | δ (matplotlib imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...humanize import fmt_num


def _name(index: int, names: list[str]) -> str:
    return names[index] if 0 <= index < len(names) else str(index)


def pairs_plot(path: Path, rows: list[dict[str, Any]], *, class_names: list[str], dimension: int) -> Path:
    """One row per example: the image, its colliding partner (with both top-1 predictions) and δ
    (red up, blue down, on a symmetric scale), from the thumbnails in the partial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.2 * len(rows) + 0.5), squeeze=False)
    for r, row in enumerate(rows):
        image = np.asarray(row["image"], dtype=float)
        delta = np.asarray(row["delta"], dtype=float)
        partner = np.clip(image + delta, 0.0, 1.0)  # thumbnails average-pool: x' = x + δ holds for them too
        for c, (data, title) in enumerate((
                (image, f"x: {_name(row['prediction'], class_names)}"),
                (partner, f"x': {_name(row['partner_prediction'], class_names)}"),
                (delta, f"δ: L-inf {fmt_num(row['linf'], 3)}, L2 {fmt_num(row['l2'], 3)}"))):
            ax = axes[r][c]
            if c == 2:
                top = max(float(np.abs(delta).max()), 1e-12)
                shown = ax.imshow(delta.mean(axis=0), cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
                fig.colorbar(shown, ax=ax, fraction=0.046)
            elif data.shape[0] == 1:
                ax.imshow(data[0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            else:
                ax.imshow(data.transpose(1, 2, 0), interpolation="nearest")
            ax.set_title(title, fontsize=8, parse_math=False)
            ax.axis("off")
    fig.suptitle(f"colliding pairs: x' - x in the null space of the first layer (dimension {dimension}); "
                 "same features after it", fontsize=8, parse_math=False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
