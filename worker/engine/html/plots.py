"""Aggregate plots of report.html, drawn from report.json data alone (no run state needed).

Each function takes a suite's report entry and returns a :class:`Plot` (a titled PNG with
the sample count in its title) or None when the suite did not compute that part. matplotlib
is imported lazily and drawn on ``Figure`` with the Agg canvas: no pyplot state, nothing
left open in a long-lived API process.

Labels come from the report, and the report's class and layer names come from the model's
or generator's card (hostile input): :func:`_label` shortens them and every text is drawn with
``parse_math=False``, so that matplotlib never parses a name as mathtext (a crafted name such as
``$\\frac{$`` would otherwise fail the drawing).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..humanize import fmt_eps, fmt_num

#: FRI types in the order the page draws them
FRI_TYPES = ("loose_shift", "strict_shift", "loose_shrink", "strict_shrink")
LABEL_CHARS = 24
#: up to this many classes each point of the modify/mimic plot is named; above, the extremes only
ANNOTATE_CLASSES = 30


@dataclass(frozen=True)
class Plot:
    """One figure of the page.

    Args:
        title: the figure's title (also drawn in the image), with its sample count.
        png: the PNG bytes.
        alt: a sentence for the image's alt text.
        thresholds: the gate thresholds drawn, as (metric, op, threshold) triples.
        ticks: the x tick labels, as written (eps as a person reads it: ``8/255``).
        note: why the figure was left out (``png`` is then empty): the page shows the note in
            its place instead of an empty set of axes.
    """

    title: str
    png: bytes
    alt: str
    thresholds: list[tuple[str, str, float]] = field(default_factory=list)
    ticks: list[str] = field(default_factory=list)
    note: str | None = None


def _label(text: Any) -> str:
    s = str(text)
    if len(s) > LABEL_CHARS:
        s = s[:LABEL_CHARS - 1] + "…"
    return s


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=90, layout="constrained")


def _png(fig: Any) -> bytes:
    from matplotlib.text import Text

    for text in fig.findobj(Text):  # titles, legends, annotations: text, never mathtext
        text.set_parse_math(False)
    buf = io.BytesIO()
    # No "Software" text chunk: the page holds no URL at all, not even inside an image.
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _value(leaf: Any) -> float:
    v = leaf.get("value") if isinstance(leaf, Mapping) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _n(leaves: Sequence[Mapping[str, Any]]) -> int:
    return max((int(leaf.get("n") or 0) for leaf in leaves), default=0)


def _ci(leaf: Mapping[str, Any], siblings: Mapping[str, Any] | None = None) -> tuple[float, float] | None:
    """A leaf's 95% interval: its ``ci95`` pair, else bootstrap ``ci95_low``/``ci95_high`` beside it."""
    ci = leaf.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(c, (int, float)) for c in ci):
        return float(ci[0]), float(ci[1])
    if siblings is not None:
        low, high = _value(siblings.get("ci95_low")), _value(siblings.get("ci95_high"))
        if math.isfinite(low) and math.isfinite(high):
            return low, high
    return None


def _errorbar(ax: Any, xs: list[float], ys: list[float], cis: list[tuple[float, float] | None], **kw: Any) -> None:
    """A line with markers and, where known, its 95% interval as error bars."""
    low = [y - c[0] if c is not None and math.isfinite(y) else 0.0 for y, c in zip(ys, cis)]
    high = [c[1] - y if c is not None and math.isfinite(y) else 0.0 for y, c in zip(ys, cis)]
    if any(c is not None for c in cis):
        ax.errorbar(xs, ys, yerr=[low, high], capsize=3, marker="o", **kw)
    else:
        ax.plot(xs, ys, marker="o", **kw)


def robust_accuracy(entry: Mapping[str, Any], gates: Sequence[Mapping[str, Any]]) -> Plot | None:
    """Robust accuracy against eps, one panel per norm, with the gates on those numbers drawn."""
    table = entry.get("metrics", {}).get("robust_accuracy")
    if not isinstance(table, Mapping) or not table:
        return None
    norms = [nm for nm, row in table.items() if isinstance(row, Mapping) and row]
    if not norms:
        return None
    fig = _figure(4.6 * len(norms), 3.8)
    axes = fig.subplots(1, len(norms), squeeze=False)[0]
    leaves_all: list[Mapping[str, Any]] = []
    drawn: list[tuple[str, str, float]] = []
    ticks: list[str] = []
    for ax, norm in zip(axes, norms):
        points = sorted(((float(leaf.get("eps", math.nan)), key, leaf) for key, leaf in table[norm].items()
                         if isinstance(leaf, Mapping)), key=lambda p: p[0])
        leaves_all += [p[2] for p in points]
        xs = [p[0] for p in points]
        ys = [_value(p[2]) for p in points]
        _errorbar(ax, xs, ys, [_ci(p[2]) for p in points], color="black", label="worst case over the attacks")
        by_key = {p[1]: p[0] for p in points}
        for gate in gates:
            parts = str(gate.get("metric", "")).split(".")
            if (parts[:3] != ["attacks", "robust_accuracy", norm] or len(parts) < 4 or parts[3] not in by_key
                    or gate.get("threshold") is None):  # a baseline gate whose baseline lacks the metric
                continue
            thr = float(gate["threshold"])
            colour = "#2e7d32" if gate.get("passed") else "#c62828"
            ax.axhline(thr, color=colour, linestyle="--", linewidth=1)
            ax.plot([by_key[parts[3]]], [thr], marker="v" if gate.get("op") in (">=", ">") else "^",
                    color=colour, markersize=9, linestyle="none",
                    label=f"gate {gate.get('op')} {fmt_num(thr)} at {fmt_eps(by_key[parts[3]])}"
                          f"{' (' + parts[4] + ')' if len(parts) > 4 else ''}")
            drawn.append((str(gate["metric"]), str(gate.get("op")), thr))
        ticks += [fmt_eps(x) for x in xs]
        ax.set_xticks(xs, [fmt_eps(x) for x in xs], parse_math=False)
        ax.set_xlabel(f"{_label(norm)} eps")
        ax.set_ylabel("robust accuracy")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        ax.set_title(_label(norm), fontsize=9)
    title = f"Robust accuracy against eps (n = {_n(leaves_all)} samples)"
    fig.suptitle(title, fontsize=10)
    return Plot(title, _png(fig), "robust accuracy at each eps per norm, with 95% intervals and gate thresholds",
                drawn, ticks)


def corruption_heatmap(entry: Mapping[str, Any]) -> Plot | None:
    """Accuracy per corruption (rows) and severity (columns), each cell written out."""
    table = entry.get("metrics", {}).get("corruptions")
    if not isinstance(table, Mapping):
        return None
    rows: list[tuple[str, dict[int, Mapping[str, Any]]]] = []
    for name, node in table.items():
        if not isinstance(node, Mapping) or "value" in node:
            continue
        cells = {int(leaf["severity"]): leaf for leaf in node.values()
                 if isinstance(leaf, Mapping) and isinstance(leaf.get("severity"), int)}
        if cells:
            rows.append((name, cells))
    if not rows:
        return None
    severities = sorted({s for _, cells in rows for s in cells})
    grid = [[_value(cells.get(s, {})) for s in severities] for _, cells in rows]
    fig = _figure(1.1 * len(severities) + 3.2, 0.42 * len(rows) + 1.6)
    ax = fig.subplots()
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, "–" if math.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(severities)), [str(s) for s in severities], parse_math=False)
    ax.set_yticks(range(len(rows)), [_label(name) for name, _ in rows], parse_math=False)
    ax.set_xlabel("severity")
    fig.colorbar(im, ax=ax, label="accuracy")
    title = f"Accuracy under corruptions (n = {_n([leaf for _, c in rows for leaf in c.values()])} samples)"
    ax.set_title(title, fontsize=10)
    return Plot(title, _png(fig), "heatmap of accuracy by corruption and severity")


def fri_rates(entry: Mapping[str, Any]) -> Plot | None:
    """Mean FRI rate against the region fraction r, one line per FRI type, with bootstrap intervals."""
    metrics = entry.get("metrics", {})
    per_r = sorted(((float(node["region_accuracy"]["mean"].get("r", math.nan)), node) for key, node in
                    metrics.items() if isinstance(node, Mapping) and isinstance(node.get("region_accuracy"),
                                                                                   Mapping)
                    and isinstance(node["region_accuracy"].get("mean"), Mapping)), key=lambda p: p[0])
    if not per_r:
        return None
    fig = _figure(5.4, 3.8)
    ax = fig.subplots()
    leaves: list[Mapping[str, Any]] = []
    xs = [r for r, _ in per_r]
    for kind in FRI_TYPES:
        stats = [node.get(kind, {}).get("overall") for _, node in per_r]
        if not any(isinstance(s, Mapping) and isinstance(s.get("mean"), Mapping) for s in stats):
            continue
        ys = [_value(s.get("mean")) if isinstance(s, Mapping) else math.nan for s in stats]
        cis = [_ci(s["mean"], s) if isinstance(s, Mapping) and isinstance(s.get("mean"), Mapping) else None
               for s in stats]
        leaves += [s["mean"] for s in stats if isinstance(s, Mapping) and isinstance(s.get("mean"), Mapping)]
        _errorbar(ax, xs, ys, cis, label=kind.replace("_", " "))
    if not leaves:
        return None
    ax.set_xticks(xs, [fmt_num(r) for r in xs], parse_math=False)
    ax.set_xlabel("region fraction r")
    ax.set_ylabel("share of regions that are FRIs")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    title = f"Fragile regions against r (n = {_n(leaves)} images)"
    ax.set_title(title, fontsize=10)
    return Plot(title, _png(fig), "mean share of fragile regions per FRI type at each region fraction r",
                ticks=[fmt_num(r) for r in xs])


def generator_layers(entry: Mapping[str, Any]) -> Plot | None:
    """Success rate against the budget eps (spread units), one line per generator layer, coarse to fine."""
    table = entry.get("metrics", {}).get("generator_layers")
    if not isinstance(table, Mapping):
        return None
    order = list((entry.get("generator") or {}).get("layers") or []) or list(table)
    fig = _figure(5.4, 3.8)
    ax = fig.subplots()
    leaves: list[Mapping[str, Any]] = []
    all_eps: set[float] = set()
    for layer in order:
        node = table.get(layer)
        rates = node.get("success_rate") if isinstance(node, Mapping) else None
        if not isinstance(rates, Mapping) or not rates:
            continue
        points = sorted((float(leaf.get("eps", math.nan)), leaf) for leaf in rates.values()
                        if isinstance(leaf, Mapping))
        leaves += [p[1] for p in points]
        all_eps |= {p[0] for p in points}
        _errorbar(ax, [p[0] for p in points], [_value(p[1]) for p in points], [_ci(p[1]) for p in points],
                  label=_label(layer))
    if not leaves:
        return None
    ticks = sorted(all_eps)
    ax.set_xticks(ticks, [fmt_num(e) for e in ticks], parse_math=False)
    ax.set_xlabel("budget eps (L2 of p, spread units)")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.03, 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="layer (coarse to fine)", title_fontsize=8)
    title = f"Generator-layer success against eps (n = {_n(leaves)} seeds)"
    ax.set_title(title, fontsize=10)
    return Plot(title, _png(fig), "success rate of generator-layer perturbations per layer at each budget",
                ticks=[fmt_num(e) for e in ticks])


def modify_mimic(entry: Mapping[str, Any]) -> Plot | None:
    """Per class: how often its images can be pushed to another class (modify) against how often
    other images can be pushed to it (mimic)."""
    targeted = entry.get("metrics", {}).get("targeted")
    if not isinstance(targeted, Mapping):
        return None
    from ..suites.attacks.targeted import MIN_ATTEMPTS

    modify, mimic = targeted.get("modify") or {}, targeted.get("mimic") or {}
    # a rate on one attempt is 0 or 1: a class enters with MIN_ATTEMPTS on each side, as in the engine
    names = [c for c in modify if c in mimic and _attempts(modify[c]) >= MIN_ATTEMPTS
             and _attempts(mimic[c]) >= MIN_ATTEMPTS]
    if len(names) < 2:
        meta = ((entry.get("metadata") or {}).get("targeted") or {}).get("plot_note")
        note = meta if isinstance(meta, str) else (
            f"Left out: {len(names)} classes have modify and mimic rates on at least {MIN_ATTEMPTS} attempts each "
            "(2 needed); the rates are in the per-class table and report.json")
        return Plot("Modify against mimic per class", b"", "", note=note)
    fig = _figure(4.8, 4.4)
    ax = fig.subplots()
    xs = [_value(modify[c]) for c in names]
    ys = [_value(mimic[c]) for c in names]
    ax.scatter(xs, ys, s=12 if len(names) > ANNOTATE_CLASSES else 24)
    # Many classes (a card may name 100,000): name only the extremes, or the labels hide the points.
    order = sorted(range(len(names)), key=lambda i: xs[i] + ys[i])
    named = set(order) if len(names) <= ANNOTATE_CLASSES else set(order[:5] + order[-5:])
    for i in sorted(named):
        ax.annotate(_label(names[i]), (xs[i], ys[i]), textcoords="offset points", xytext=(3, 3), fontsize=7,
                    parse_math=False)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("modify rate (class as source)")
    ax.set_ylabel("mimic rate (class as target)")
    ax.grid(alpha=0.3)
    pairs = int((targeted.get("success_rate") or {}).get("n") or 0)
    rho = (targeted.get("spearman") or {}).get("value")
    title = f"Modify against mimic per class (n = {pairs} pairs)"
    rank = f"Spearman rank correlation {fmt_num(rho, 2)}" if isinstance(rho, (int, float)) else ""
    ax.set_title(title + ("\n" + rank if rank else ""), fontsize=9)
    return Plot(title, _png(fig), "scatter of modify rate against mimic rate, one point per class")


def _attempts(leaf: Any) -> int:
    n = leaf.get("n") if isinstance(leaf, Mapping) else None
    return int(n) if isinstance(n, int) and not isinstance(n, bool) else 0
def shift_accuracy(entry: Mapping[str, Any]) -> Plot | None:
    """Accuracy per uncertainty bin on both datasets (with 95% intervals), over the share of each set
    in each bin: where the second set holds more uncertain images, the naive drop overstates."""
    bins = entry.get("metrics", {}).get("bins")
    if not isinstance(bins, Mapping) or not bins:
        return None
    keys = sorted((k for k, v in bins.items() if isinstance(v, Mapping) and k.isdigit()), key=int)
    if not keys:
        return None
    fig = _figure(6.2, 4.0)
    ax = fig.subplots()
    share_ax = ax.twinx()
    xs = [float(k) for k in keys]
    totals = {}
    for side, colour, offset in (("reference", "#1f4e79", -0.2), ("other", "#c0504d", 0.2)):
        counts = [_value(bins[k].get(f"count_{side}")) for k in keys]
        total = sum(c for c in counts if math.isfinite(c))
        totals[side] = int(total)
        share_ax.bar([x + offset for x in xs], [c / total if total else 0.0 for c in counts], width=0.38,
                     color=colour, alpha=0.15)
        leaves = [bins[k].get(side) or {} for k in keys]
        _errorbar(ax, xs, [_value(leaf) for leaf in leaves], [_ci(leaf) for leaf in leaves], color=colour,
                  label=f"{'reference' if side == 'reference' else 'second dataset'} (bars: share of its images)")
    measure = "entropy" if (entry.get("metadata") or {}).get("uncertainty") == "entropy" else "1 - max softmax"
    ticks = [_span_label((bins[k].get("reference") or {}).get("uncertainty")) for k in keys]
    ax.set_xticks(xs, ticks, parse_math=False, rotation=30, fontsize=7)
    ax.set_xlabel(f"uncertainty bin ({measure}; fixed on the reference, most certain first)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.03, 1.03)
    share_ax.set_ylabel("share of the set's images")
    share_ax.set_ylim(0, 1)
    ax.set_zorder(share_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    title = (f"Accuracy against uncertainty (n = {totals.get('reference', 0)} reference, "
             f"{totals.get('other', 0)} second dataset)")
    ax.set_title(title, fontsize=9)
    return Plot(title, _png(fig), "accuracy per uncertainty bin on the reference and the second dataset, with 95% "
                "intervals, over bars of each set's share of images per bin", ticks=ticks)


def _span_label(span: Any) -> str:
    if not isinstance(span, (list, tuple)) or len(span) != 2:
        return "?"
    low, high = (fmt_num(float(v), 2) if isinstance(v, (int, float)) else None for v in span)
    if low is None and high is None:
        return "all"
    if low is None:
        return f"<= {high}"
    if high is None:
        return f"> {low}"
    return f"{low}-{high}"
def null_space_spectrum(entry: Mapping[str, Any]) -> Plot | None:
    """The singular values of the model's first linear operator, largest first, on a log scale, with
    the tolerance under which one counts as zero: the null space is the drop to the floor."""
    facts = entry.get("null_space")
    if not isinstance(facts, Mapping) or not isinstance(facts.get("spectrum"), list) or not facts["spectrum"]:
        return None
    values = [float(v) for v in facts["spectrum"] if isinstance(v, (int, float)) and not isinstance(v, bool)]
    length = int(facts.get("spectrum_length") or len(values))
    top = max(values, default=0.0)
    if not values or top <= 0:
        return None
    tol = float(facts.get("rtol") or 0.0) * top
    floor = max(tol * 1e-3, top * 1e-16)
    way = str(facts.get("way", ""))
    ranks = list(range(len(values))) if way == "iterative" else [
        round(i * (length - 1) / max(1, len(values) - 1)) for i in range(len(values))]
    fig = _figure(5.4, 3.6)
    ax = fig.subplots()
    shown = [max(v, floor) for v in values]
    zero = [v <= tol for v in values]
    ax.plot([r for r, z in zip(ranks, zero) if not z], [v for v, z in zip(shown, zero) if not z], "o", markersize=3,
            color="#1565c0", label="singular values")
    if any(zero):
        ax.plot([r for r, z in zip(ranks, zero) if z], [v for v, z in zip(shown, zero) if z], "o", markersize=3,
                color="#c62828", label="zero: the null space")
    if tol > 0:
        ax.axhline(tol, color="grey", linestyle="--", linewidth=0.8, label=f"tolerance ({fmt_num(tol, 2)})")
    ax.set_yscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0e}"))  # text, not mathtext
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel({"iterative": "the largest, then the smallest ones LOBPCG found",
                   "exact_patches": "rank (per patch: each value once per patch)"}.get(way, "rank"))
    ax.set_ylabel("singular value")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    dim = facts.get("dimension")
    more = "at least " if facts.get("lower_bound") else ""
    title = f"First-layer singular values (n = {length} values)"
    ax.set_title(f"{title}\n{way.replace('_', ' ')}: null space dimension {more}{dim}", fontsize=9)
    return Plot(title, _png(fig), "singular values of the model's first linear operator, largest first, with the "
                "tolerance under which they count as zero")


def saliency_overlap(entry: Mapping[str, Any]) -> Plot | None:
    """How many fooled samples put which share of their perturbation's energy in the top Grad-CAM region,
    per norm, with the chance level marked."""
    facts = (entry.get("metadata") or {}).get("saliency")
    if not isinstance(facts, Mapping) or not isinstance(facts.get("histogram"), Mapping):
        return None
    hist = {str(k): [int(c) for c in v] for k, v in facts["histogram"].items() if isinstance(v, list)}
    total = sum(sum(v) for v in hist.values())
    if not total:
        return None
    bins = int(facts.get("bins") or max(len(v) for v in hist.values()))
    edges = [i / bins for i in range(bins)]
    fig = _figure(5.4, 3.6)
    ax = fig.subplots()
    width = 1.0 / bins / max(1, len(hist))
    for k, (norm, counts) in enumerate(hist.items()):
        ax.bar([e + k * width for e in edges[:len(counts)]], counts, width=width, align="edge", label=_label(norm))
    chance = facts.get("chance")
    if isinstance(chance, (int, float)):
        ax.axvline(float(chance), color="black", linestyle="--", linewidth=1, label=f"chance ({fmt_num(chance, 3)})")
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the perturbation's energy in the top Grad-CAM region")
    ax.set_ylabel("fooled samples")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    title = f"Where the perturbation lands (n = {total} examples)"
    ax.set_title(title, fontsize=10)
    return Plot(title, _png(fig), "histogram of the share of each successful perturbation's energy inside the "
                "top Grad-CAM region of the clean image, per norm, with the chance level")


def suite_plots(name: str, entry: Mapping[str, Any], gates: Sequence[Mapping[str, Any]]) -> list[Plot]:
    """Every aggregate plot the suite's entry has data for, in reading order."""
    makers = {
        "attacks": (lambda: robust_accuracy(entry, gates), lambda: modify_mimic(entry),
                    lambda: saliency_overlap(entry)),
        "perturbation": (lambda: corruption_heatmap(entry), lambda: generator_layers(entry)),
        "fragile": (lambda: fri_rates(entry),),
        "shift": (lambda: shift_accuracy(entry),),
        "invariance": (lambda: null_space_spectrum(entry),),
    }.get(name, ())
    return [p for p in (make() for make in makers) if p is not None]
