"""PNG figures: score against budget per (mode, context length), and the prefill overhead and decode speedup of
`lookahead-cache bench`. matplotlib is imported when a figure is drawn, so that the rest of the report does not
need it."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..methods import FULL
from .statistics import by_table, family_order, is_fraction, is_token_budget
from .tables import budget_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# Distinct (color, marker) pairs for up to 140 methods: 20 colors and 7 markers cycle independently.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def plot_accuracy_vs_budget(summary: Sequence[dict[str, Any]], directory: str | Path) -> list[Path]:
    """Plot score against budget, one figure per (mode, context length) and kind of budget.

    Token budgets go to `accuracy_{mode}_{length}.png` on a log2 axis, fractions of the prompt to
    `accuracy_{mode}_{length}_fraction.png` (the two scales cannot share an axis). Each figure has one panel per
    family and one for `average`, a line per method with its confidence band, and rows without a budget (`full`)
    as dashed horizontal lines.

    Returns:
        The paths written, in the order of the summary.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    methods = list(dict.fromkeys(entry["method"] for entry in summary))
    # tab20's ten dark shades first, then their light twins: the first ten methods get clearly distinct colors.
    from matplotlib import colormaps

    colors = colormaps["tab20"].colors[0::2] + colormaps["tab20"].colors[1::2]
    styles = {
        method: {"color": colors[i % len(colors)], "marker": MARKERS[i % len(MARKERS)]}
        for i, method in enumerate(methods)
    }
    paths = []
    for (mode, length), entries in by_table(summary).items():
        references = [entry for entry in entries if entry["budget"] is None]
        for suffix, is_kind in (("", is_token_budget), ("_fraction", is_fraction)):
            points = [entry for entry in entries if is_kind(entry["budget"])]
            if points:
                path = directory / f"{accuracy_stem(mode, length)}{suffix}.png"
                figure = _accuracy_figure(references + points, styles, f"{mode}, {length} tokens", bool(suffix))
                figure.savefig(path)
                paths.append(path)
    return paths


def plot_overhead(bench: dict[str, Any], path: str | Path) -> Path:
    """Bar charts of prefill overhead (%) and decode speedup (x) per cache and prompt length, from bench.json.

    The full cache is the reference (0% overhead, 1x speedup), drawn as a line rather than a bar.
    """
    from matplotlib.figure import Figure

    rows = [row for row in bench["results"] if row["cache"] != FULL]
    lengths = sorted({row["length"] for row in rows})
    caches = list(dict.fromkeys(row["cache"] for row in rows))
    figure = Figure(figsize=(10, 3.6), layout="constrained")
    overhead_axes, speedup_axes = figure.subplots(1, 2)
    width = min(0.8 / max(len(caches), 1), 0.3)
    for axes, field, scale, reference, label in (
        (overhead_axes, "prefill_overhead", 100, 0.0, "prefill overhead vs full cache (%)"),
        (speedup_axes, "decode_speedup", 1, 1.0, "decode speedup vs full cache (x)"),
    ):
        for i, cache in enumerate(caches):
            values = {row["length"]: scale * row[field] for row in rows if row["cache"] == cache}
            offset = (i - (len(caches) - 1) / 2) * width
            positions = [j + offset for j, length in enumerate(lengths) if length in values]
            heights = [values[length] for length in lengths if length in values]
            bars = axes.bar(positions, heights, width, label=cache, color=f"C{i}")
            axes.bar_label(bars, fmt="%+.1f" if scale == 100 else "%.2f", fontsize=8)
        axes.axhline(reference, color="black", linewidth=0.8)
        axes.set_xticks(range(len(lengths)), [str(length) for length in lengths])
        axes.set_xlim(-0.5, len(lengths) - 0.5)
        axes.set_xlabel("prompt tokens")
        axes.set_ylabel(label)
    overhead_axes.legend(title="cache")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _accuracy_figure(
    entries: list[dict[str, Any]], styles: dict[str, dict[str, str]], title: str, fractions: bool
) -> Figure:
    """One panel per family (then `average`): a line per budgeted method, a dashed line per unbudgeted one."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    families = family_order(entries)
    budgets = sorted({entry["budget"] for entry in entries if entry["budget"] is not None})
    columns = min(len(families), 3)
    figure = Figure(figsize=(4 * columns, 3.2 * math.ceil(len(families) / columns) + 0.6), layout="constrained")
    figure.suptitle(title)
    legend: dict[str, Any] = {}
    for axes, family in zip(figure.subplots(math.ceil(len(families) / columns), columns, squeeze=False).flat, families):
        lines: dict[str, list[dict[str, Any]]] = {}
        for entry in entries:
            if entry["family"] == family:
                lines.setdefault(entry["method"], []).append(entry)
        for method, points in lines.items():
            style = styles[method]
            if points[0]["budget"] is None:
                legend[method] = axes.axhline(100 * points[0]["mean"], color=style["color"], linestyle="--")
                continue
            x = [point["budget"] for point in points]
            low = [np.nan if point["ci_low"] is None else 100 * point["ci_low"] for point in points]
            high = [np.nan if point["ci_high"] is None else 100 * point["ci_high"] for point in points]
            (legend[method],) = axes.plot(x, [100 * point["mean"] for point in points], **style)
            axes.fill_between(x, low, high, color=style["color"], alpha=0.15, linewidth=0)
        axes.set_xscale("log", base=2)
        axes.set_xticks(budgets, [budget_label(budget) for budget in budgets])
        axes.xaxis.set_minor_locator(NullLocator())
        axes.set_title(family)
        axes.set_xlabel("fraction of the prompt kept" if fractions else "budget (tokens per layer and KV head)")
        axes.set_ylim(-3, 103)
        axes.set_ylabel("score x100")
    for axes in figure.axes[len(families) :]:
        axes.set_visible(False)
    figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 6))
    return figure


def accuracy_stem(mode: str, length: int) -> str:
    """Modes come from the data: keep file names to characters that are safe on every file system."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"accuracy_{mode}_{length}")
