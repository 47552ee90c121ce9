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
