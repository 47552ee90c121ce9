"""PNG plots of the attacks suite (matplotlib imported lazily: the engine runs without it)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from ...humanize import fmt_eps, fmt_num
from .params import attacks_for, budgets, eps_key


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)  # figures are not freed otherwise; a worker runs many audits
    return path


def robust_accuracy_plot(path: Path, metrics: dict[str, Any], params: dict[str, Any]) -> Path:
    """Robust accuracy against eps, one panel per norm: worst case and each attack alone."""
    plt = _pyplot()
    norms = params["norms"]
    fig, axes = plt.subplots(1, len(norms), figsize=(4.5 * len(norms), 3.6), squeeze=False)
    for ax, norm in zip(axes[0], norms):
        eps = budgets(params, norm)
        order = sorted(range(len(eps)), key=lambda i: eps[i])
        xs = [eps[i] for i in order]
        worst = [metrics["robust_accuracy"][norm][eps_key(eps[i])]["value"] for i in order]
        ax.plot(xs, worst, "k-o", label="worst case", linewidth=2)
        for a in attacks_for(params, norm):
            ys = [metrics["per_attack"][norm][a][eps_key(eps[i])]["value"] for i in order]
            ax.plot(xs, ys, "--.", label=a)
        ax.set_xticks(xs, [fmt_eps(e) for e in xs])  # 8/255, not 0.0313725
        ax.set_xlabel(f"{norm} eps")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        n = max((leaf.get("n", 0) for leaf in metrics["robust_accuracy"][norm].values()), default=0)
        ax.set_title(f"{norm} robust accuracy against eps (n = {n} samples)", fontsize=9)
    return _save(plt, fig, path)


def modify_mimic_plot(path: Path, targeted: dict[str, Any], min_attempts: int = 1) -> Path:
    """Modify rate against mimic rate per class, annotated with the class names: the classes whose
    two rates each rest on at least ``min_attempts`` attempts."""
    plt = _pyplot()
    names = [c for c in targeted["modify"] if c in targeted["mimic"] and targeted["modify"][c]["n"] >= min_attempts
             and targeted["mimic"][c]["n"] >= min_attempts]
    xs = [targeted["modify"][c]["value"] for c in names]
    ys = [targeted["mimic"][c]["value"] for c in names]
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(xs, ys)
    for c, x, y in zip(names, xs, ys):
        ax.annotate(c, (x, y), textcoords="offset points", xytext=(3, 3), fontsize=8, parse_math=False)
    rho = targeted["spearman"]["value"]
    n = targeted["success_rate"]["n"]
    ax.set_title(f"modify vs mimic (n = {n} pairs" + (f", Spearman {fmt_num(rho, 2)})" if rho is not None else ")"),
                 fontsize=9)
    ax.set_xlabel("modify rate (as source)")
    ax.set_ylabel("mimic rate (as target)")
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def loss_curve_plot(path: Path, curves: dict[str, Any]) -> Path:
    """Cumulative success rate against iterations, one line per loss."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, c in curves["losses"].items():
        ys = [v if v is not None else float("nan") for v in c["success_rate"]]
        ax.plot(curves["iterations"], ys, label=name)
    attacked = max((c.get("attacked", 0) for c in curves["losses"].values()), default=0)
    ax.set_title(f"success against iterations per loss (n = {attacked} samples)", fontsize=9)
    ax.set_xlabel("iterations")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


def mask_plot(path: Path, title: str, mask: list[list[float]], image: list[list[float]] | None,
              perturbation: list[list[float]] | None) -> Path:
    """The mask, and an example: the clean image with the mask outlined, and |perturbation|."""
    plt = _pyplot()
    panels: list[tuple[str, list[list[float]], str, float | None]] = [("mask (yellow)", mask, "viridis", 1.0)]
    if image is not None:
        panels.append(("example image, mask outlined", image, "gray", 1.0))
    if perturbation is not None:
        failed = max(map(max, perturbation), default=0.0) == 0.0
        panels.append(("|perturbation|: failed within the cap" if failed else "|perturbation| (untargeted)",
                       perturbation, "magma", None))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9), squeeze=False)
    for k, (ax, (label, data, cmap, top)) in enumerate(zip(axes[0], panels)):
        shown = ax.imshow(data, cmap=cmap, interpolation="nearest", vmin=0.0, vmax=top)
        if k == 1:
            ax.contour(mask, levels=[0.5], colors="red", linewidths=0.8)
        if top is None:
            fig.colorbar(shown, ax=ax, fraction=0.046)
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def saliency_plot(path: Path, rows: list[dict[str, Any]], *, top_fraction: float, layer: str) -> Path:
    """One row per fooled sample: the clean image under its Grad-CAM map with the top region outlined,
    then |perturbation| per norm (channels combined) with the same outline and the overlap."""
    import numpy as np

    plt = _pyplot()
    norms = sorted({n for r in rows for n in r["delta"]})
    cols = 1 + len(norms)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.5 * len(rows) + 0.5), squeeze=False)
    for r, row in enumerate(rows):
        cam = np.asarray(row["cam"], dtype=float)
        k = max(1, round(top_fraction * cam.size))
        level = np.sort(cam.ravel())[::-1][k - 1] if cam.max() > 0 else None
        ax = axes[r][0]
        ax.imshow(np.asarray(row["image"], dtype=float), cmap="gray", interpolation="nearest")
        ax.imshow(cam, cmap="jet", alpha=0.45, interpolation="bilinear")
        if level is not None:
            ax.contour(cam >= level, levels=[0.5], colors="white", linewidths=0.8)
        ax.set_title(f"{row['id']}: Grad-CAM, top {top_fraction:.0%} outlined", fontsize=7, parse_math=False)
        for c, norm in enumerate(norms, start=1):
            ax = axes[r][c]
            delta = row["delta"].get(norm)
            if delta is None:
                ax.axis("off")
                continue
            data = np.asarray(delta, dtype=float)
            shown = ax.imshow(data, cmap="magma", interpolation="nearest")
            fig.colorbar(shown, ax=ax, fraction=0.046)
            if level is not None:
                ax.contour(cam >= level, levels=[0.5], colors="cyan", linewidths=0.8)
            facts = row["norms"].get(norm) or {}
            overlap = facts.get("overlap")
            ax.set_title(f"|δ| {norm} (eps {fmt_eps(facts.get('eps', 0.0))}, {facts.get('attack', '')}): "
                         f"overlap {fmt_num(overlap, 2) if overlap is not None else 'n/a'}", fontsize=7,
                         parse_math=False)
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    title = textwrap.fill(f"where the perturbation lands: Grad-CAM at {layer}"[:300], width=20 * cols)
    fig.suptitle(title, fontsize=8, parse_math=False)
    return _save(plt, fig, path)
