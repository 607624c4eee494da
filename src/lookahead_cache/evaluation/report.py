"""Evaluation outputs -> summary tables, plots and a results page.

An evaluation run writes one JSON object per (sample, mode, method, budget) to `DIR/predictions*.jsonl`, and
`lookahead-cache bench --out DIR/bench.json` writes the speed and memory measurements. This module turns them
into:

* `summarize`: mean score and a 95% confidence interval per (mode, context length, family, method, budget),
  plus a macro `"average"` over families;
* `markdown_summary`: one table per (mode, context length);
* `plot_accuracy_vs_budget` and `plot_overhead`: PNG figures;
* `write_results_page`: all of the above on one markdown page (docs/results.md).

Every number written comes from the rows, and everything is ordered deterministically, so that a regenerated
page only differs where the results do.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..run_folder import read_jsonl
from ..training.config import SUITE_SPLIT
from .benchmark import format_results, markdown_table
from .methods import FULL

if TYPE_CHECKING:
    from matplotlib.figure import Figure

AVERAGE = "average"
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
REQUIRED_FIELDS = ("sample_id", "family", "context_length", "mode", "method", "budget")
SCORE_FIELDS = ("metric", "prediction", "answers")
CAPTION = (
    "Mean score x100 per family, with its 95% confidence interval in brackets (percentile bootstrap over "
    f"samples, {BOOTSTRAP_RESAMPLES} resamples, fixed seed; none for a single sample) and the number of samples. "
    f"`{AVERAGE}` is the mean of the family means, given only where the method and budget cover every family "
    "of the table. Budgets are tokens per layer and KV head, or a percentage of each prompt."
)
EVICTION_COST_CAPTION = (
    "Time each method adds between the prefill and the first decoding step, measured in the evaluation itself "
    "(medians over its answers): scoring, selection and copying for heuristics, a forward over the full-cache "
    "answer for `oracle`, drafting and a forward over the draft for `laq`. Evaluation timings share the machine "
    "with nothing else but are not repeated; `lookahead-cache bench` below measures prefill overhead properly."
)
# Distinct (color, marker) pairs for up to 140 methods: 20 colors and 7 markers cycle independently.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def load_rows(directory: str | Path) -> list[dict[str, Any]]:
    """Read every `predictions*.jsonl` of an evaluation directory, one row per (sample, mode, method, budget).

    `predictions.jsonl` is read first, then the other files (e.g. `predictions-kvpress.jsonl`) in name order, so
    that methods keep the order in which the main runner wrote them. Runs are resumable and may be re-run: a later
    row for the same (sample_id, mode, method, budget) replaces the earlier one. Rows whose `score` is missing or
    null (the kvpress runner leaves it to us) are scored with `lookahead_cache.evaluation.metrics.score`, one call
    per metric. A last line cut short by an interrupted run is left out with a warning (the run redoes its row).

    Raises:
        FileNotFoundError: The directory holds no `predictions*.jsonl`.
        ValueError: A line is not a JSON object, lacks a field, or has a budget that is neither null, a token
            count nor a fraction in (0, 1]; the message names the file and line.
    """
    directory = Path(directory)
    paths = sorted(directory.glob("predictions*.jsonl"), key=lambda path: (path.name != "predictions.jsonl", path.name))
    if not paths:
        raise FileNotFoundError(f"No predictions*.jsonl in {directory}: point to the output directory of a run.")
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for path in paths:
        for row in read_jsonl(path, check=check_row):
            rows[(row["sample_id"], row["mode"], row["method"], _budget_key(row["budget"]))] = row
    return _fill_missing_scores(list(rows.values()))


def summarize(
    rows: Iterable[dict[str, Any]], groups: Mapping[str, Collection[str]] | None = None
) -> list[dict[str, Any]]:
    """Mean score and 95% confidence interval per (mode, context_length, family, method, budget).

    The interval is a percentile bootstrap (1000 resamples, fixed seed, so reruns give the same page) rather than a
    t-interval: scores such as string match are 0/1 and often near 0 or 1, where a symmetric interval would leave
    [0, 1]. A single sample gets no interval (`ci_low` and `ci_high` are None).

    Each (mode, context_length, method, budget) also gets a `family="average"` entry: the mean of its family means
    (a macro average, so a family with more samples does not weigh more), with an interval from resampling samples
    within each family. It is left out where the method and budget miss a family that others have at that mode and
    length, since averages over different families are not comparable; and it has no interval where a family has a
    single sample.

    `groups` add macro averages over groups of families the same way, each named `average (<group>)` (e.g. the
    families held out of training, and the others), where a configuration covers every family of the group that its
    table has, and the group has some but not all of the table's families.

    Args:
        rows: Rows with a `score`, as `load_rows` returns them.
        groups: Group names and their families.

    Returns:
        Dicts with `mode`, `context_length`, `family`, `method`, `budget`, `n`, `mean`, `ci_low`, `ci_high`; ordered
        by mode (in order of first appearance), context length, method (`full` first, then in order of first
        appearance), budget (tokens before fractions, ascending) and family (sorted, then the group averages in
        the order given, `average` last).
    """
    scores: dict[tuple[Any, ...], list[float]] = {}
    budgets: dict[tuple[int, float], int | float | None] = {}
    mode_order: list[str] = []
    method_order = [FULL]
    for row in rows:
        if row["family"].startswith(AVERAGE):
            raise ValueError(f"A family is named {row['family']!r}, like the macro averages: rename it.")
        key = (row["mode"], row["context_length"], row["method"], _budget_key(row["budget"]))
        scores.setdefault(key + (row["family"],), []).append(float(row["score"]))
        budgets.setdefault(key[-1], row["budget"])
        for value, order in ((row["mode"], mode_order), (row["method"], method_order)):
            if value not in order:
                order.append(value)
    table_families: dict[tuple[str, int], set[str]] = {}
    configuration_families: dict[tuple[Any, ...], set[str]] = {}
    for mode, length, method, budget, family in scores:
        table_families.setdefault((mode, length), set()).add(family)
        configuration_families.setdefault((mode, length, method, budget), set()).add(family)

    summary = []
    configurations = sorted(
        configuration_families,
        key=lambda key: (mode_order.index(key[0]), key[1], method_order.index(key[2]), key[3]),
    )
    for mode, length, method, budget in configurations:
        names = sorted(configuration_families[(mode, length, method, budget)])
        samples = [np.array(scores[(mode, length, method, budget, family)]) for family in names]
        for family, family_samples in zip(names, samples):
            summary.append(_entry(mode, length, family, method, budgets[budget], [family_samples]))
        for group, members in (groups or {}).items():
            in_table = table_families[(mode, length)] & set(members)
            if in_table and in_table != table_families[(mode, length)] and in_table <= set(names):
                grouped = [family_samples for family, family_samples in zip(names, samples) if family in in_table]
                summary.append(_entry(mode, length, f"{AVERAGE} ({group})", method, budgets[budget], grouped))
        if table_families[(mode, length)] == set(names):
            summary.append(_entry(mode, length, AVERAGE, method, budgets[budget], samples))
    return summary


def markdown_summary(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as markdown: a caption, then one table per (mode, context length).

    Rows are (method, budget), `full` first and then in summary order; columns are the families and `average`.
    Scores are shown x100 with their interval bounds, since a bootstrap interval is not symmetric around the mean.
    """
    sections = [CAPTION]
    for (mode, length), table in _summary_tables(summary).items():
        sections.append(f"### {mode}, {length} tokens\n\n{table}")
    return "\n\n".join(sections) + "\n"


def eviction_cost_table(rows: Sequence[dict[str, Any]]) -> str:
    """Per method and context length: median time to build the compressed cache, against the median prefill.

    The build time is everything a method adds between the prefill and the first decoding step: scoring,
    selection and copying for heuristics, one extra forward over the answer for `oracle`, drafting tokens for
    `laq`. Rows without timings (other runners) are left out.
    """
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row.get("compress_s") is not None and row.get("prefill_s") is not None:
            groups.setdefault((row["context_length"], row["method"]), []).append(row)
    table = []
    for (length, method), group in groups.items():
        prefill = float(np.median([row["prefill_s"] for row in group]))
        build = float(np.median([row["compress_s"] for row in group]))
        table.append(
            [str(length), method, str(len(group)), f"{prefill:.2f}", f"{build:.3f}", f"{100 * build / prefill:.1f}%"]
        )
    header = ["context", "method", "answers", "median prefill s", "median cache build s", "build / prefill"]
    return markdown_table(header, table)


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
    for (mode, length), entries in _by_table(summary).items():
        references = [entry for entry in entries if entry["budget"] is None]
        for suffix, is_kind in (("", _is_token_budget), ("_fraction", _is_fraction)):
            points = [entry for entry in entries if is_kind(entry["budget"])]
            if points:
                path = directory / f"{_accuracy_stem(mode, length)}{suffix}.png"
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


def write_results_page(directory: str | Path, page_path: str | Path, command: str) -> Path:
    """Write the results page of an evaluation directory, with its figures in a folder named after the page.

    For `docs/results.md` the figures go to `docs/results/`, linked relatively so the page renders on GitHub.
    The page holds the command that produced the outputs, `DIR/settings.json` if present, the summary tables and
    accuracy plots, the `DIR/bench.json` table and plot if present, and how to regenerate it.

    Args:
        directory: The evaluation output directory (`predictions*.jsonl`, optional `settings.json`, `bench.json`).
        page_path: The markdown file to write.
        command: The command line that produced the outputs, quoted on the page as it is.
    """
    directory, page_path = Path(directory), Path(page_path)
    figures = page_path.parent / page_path.stem
    rows = load_rows(directory)
    summary = summarize(rows, groups=SUITE_SPLIT)
    plots = plot_accuracy_vs_budget(summary, figures)
    lines = [
        "# Results",
        "",
        "<!-- Generated by lookahead_cache.evaluation.report.write_results_page: edit the code, not this page. -->",
        "",
        f"Produced from `{directory}` by:",
        "",
        "```bash",
        command,
        "```",
    ]
    settings_path = directory / "settings.json"
    if settings_path.exists():
        lines += ["", "## Settings", "", _settings_table(json.loads(settings_path.read_text(encoding="utf-8")))]
    lines += ["", "## Accuracy", "", CAPTION]
    for (mode, length), table in _summary_tables(summary).items():
        lines += ["", f"### {mode}, {length} tokens", "", table]
        stem = _accuracy_stem(mode, length)
        for plot in plots:
            if plot.stem in (stem, f"{stem}_fraction"):
                lines += ["", f"![{plot.stem}]({plot.relative_to(page_path.parent).as_posix()})"]
    lines += [
        "",
        "## Eviction cost per method",
        "",
        EVICTION_COST_CAPTION,
        "",
        eviction_cost_table(rows),
    ]
    bench_path = directory / "bench.json"
    if bench_path.exists():
        bench = json.loads(bench_path.read_text(encoding="utf-8"))
        plot = plot_overhead(bench, figures / "overhead.png")
        lines += [
            "",
            "## Speed and memory",
            "",
            f"From `{bench_path}` (`lookahead-cache bench`); ratios are against the full cache of the same prompt.",
            "",
            _settings_table(bench["settings"]),
            "",
            format_results(bench["results"]),
            "",
            f"![overhead]({plot.relative_to(page_path.parent).as_posix()})",
        ]
    lines += [
        "",
        "## How to regenerate",
        "",
        "Run the command above, then rebuild this page and its figures from the outputs with:",
        "",
        "```python",
        "from lookahead_cache.evaluation.report import write_results_page",
        f"write_results_page({str(directory)!r}, {str(page_path)!r}, command={command!r})",
        "```",
    ]
    page_path.parent.mkdir(parents=True, exist_ok=True)
    page_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return page_path


def check_row(row: dict[str, Any], where: str) -> None:
    """Refuse a predictions row that lacks a field or has an invalid budget; `where` (`path:line`) leads the
    message."""
    missing = [field for field in REQUIRED_FIELDS if field not in row]
    if row.get("score") is None:
        missing += [field for field in SCORE_FIELDS if field not in row]
    if missing:
        raise ValueError(f"{where}: missing field(s) {', '.join(missing)}.")
    budget = row["budget"]
    is_valid = budget is None or (
        not isinstance(budget, bool)
        and ((isinstance(budget, int) and budget >= 1) or (isinstance(budget, float) and 0 < budget <= 1))
    )
    if not is_valid:
        raise ValueError(
            f"{where}: budget {budget!r} is neither null, a token count (int >= 1) nor a fraction (float in (0, 1])."
        )


def _fill_missing_scores(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score the rows that lack a score, one metric call per metric so that metrics with a setup cost pay it once."""
    unscored: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("score") is None:
            unscored.setdefault(row["metric"], []).append(i)
    if not unscored:
        return rows
    from .metrics import score

    rows = list(rows)
    for metric, indices in unscored.items():
        values = score(metric, [rows[i]["prediction"] for i in indices], [rows[i]["answers"] for i in indices])
        for i, value in zip(indices, values, strict=True):
            rows[i] = {**rows[i], "score": value}
    return rows


def _budget_key(budget: int | float | None) -> tuple[int, float]:
    """A sortable key that keeps the budget's kind: 1 token and a fraction of 1.0 compare equal in Python."""
    if budget is None:
        return (0, 0.0)
    return (1, float(budget)) if _is_token_budget(budget) else (2, float(budget))


def _is_token_budget(budget: int | float | None) -> bool:
    return isinstance(budget, int) and not isinstance(budget, bool)


def _is_fraction(budget: int | float | None) -> bool:
    return isinstance(budget, float)


def _entry(
    mode: str, length: int, family: str, method: str, budget: int | float | None, samples: list[np.ndarray]
) -> dict[str, Any]:
    low, high = _bootstrap_interval(samples)
    return {
        "mode": mode,
        "context_length": length,
        "family": family,
        "method": method,
        "budget": budget,
        "n": sum(len(family_samples) for family_samples in samples),
        "mean": float(np.mean([family_samples.mean() for family_samples in samples])),
        "ci_low": low,
        "ci_high": high,
    }


def _bootstrap_interval(samples: list[np.ndarray]) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean of group means, resampling within each group.

    Seeded afresh for every call, so an entry's interval does not depend on which other entries were computed.
    """
    if any(len(group) < 2 for group in samples):
        return None, None
    generator = np.random.default_rng(BOOTSTRAP_SEED)
    means = np.zeros(BOOTSTRAP_RESAMPLES)
    for group in samples:
        means += group[generator.integers(0, len(group), size=(BOOTSTRAP_RESAMPLES, len(group)))].mean(axis=1)
    means /= len(samples)
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def _by_table(summary: Iterable[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    tables: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for entry in summary:
        tables.setdefault((entry["mode"], entry["context_length"]), []).append(entry)
    return tables


def _summary_tables(summary: Sequence[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """One markdown table per (mode, context length): rows (method, budget), columns families then `average`."""
    tables = {}
    for key, entries in _by_table(summary).items():
        families = _families(entries)
        cells: dict[tuple[str, tuple[int, float]], dict[str, str]] = {}
        for entry in sorted(entries, key=lambda entry: entry["method"] != FULL):
            row = cells.setdefault((entry["method"], _budget_key(entry["budget"])), {})
            row["budget"] = _budget_label(entry["budget"])
            row[entry["family"]] = _cell(entry)
        table = [
            [method, row["budget"], *(row.get(family, "–") for family in families)]
            for (method, _), row in cells.items()
        ]
        tables[key] = markdown_table(["method", "budget", *families], table)
    return tables


def _families(entries: Iterable[dict[str, Any]]) -> list[str]:
    """Column and panel order: families sorted, then the group averages in the order summarized, the macro average
    last."""
    names = list(dict.fromkeys(entry["family"] for entry in entries))
    averages = [name for name in names if name.startswith(f"{AVERAGE} (")]
    return sorted(set(names) - {AVERAGE, *averages}) + averages + ([AVERAGE] if AVERAGE in names else [])


def _cell(entry: dict[str, Any]) -> str:
    if entry["ci_low"] is None:
        return f"{100 * entry['mean']:.1f} (n={entry['n']})"
    return f"{100 * entry['mean']:.1f} [{100 * entry['ci_low']:.1f}, {100 * entry['ci_high']:.1f}] (n={entry['n']})"


def _budget_label(budget: int | float | None) -> str:
    if budget is None:
        return "–"
    return str(budget) if _is_token_budget(budget) else f"{100 * budget:g}%"


def _accuracy_figure(
    entries: list[dict[str, Any]], styles: dict[str, dict[str, str]], title: str, fractions: bool
) -> Figure:
    """One panel per family (then `average`): a line per budgeted method, a dashed line per unbudgeted one."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    families = _families(entries)
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
        axes.set_xticks(budgets, [_budget_label(budget) for budget in budgets])
        axes.xaxis.set_minor_locator(NullLocator())
        axes.set_title(family)
        axes.set_xlabel("fraction of the prompt kept" if fractions else "budget (tokens per layer and KV head)")
        axes.set_ylim(-3, 103)
        axes.set_ylabel("score x100")
    for axes in figure.axes[len(families) :]:
        axes.set_visible(False)
    figure.legend(legend.values(), legend.keys(), loc="outside lower center", ncols=min(len(legend), 6))
    return figure


def _accuracy_stem(mode: str, length: int) -> str:
    """Modes come from the data: keep file names to characters that are safe on every file system."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"accuracy_{mode}_{length}")


def _settings_table(settings: dict[str, Any]) -> str:
    rows = []
    for key in sorted(settings):
        value = settings[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        rows.append([key, text.replace("|", "\\|")])
    return markdown_table(["setting", "value"], rows)


def lookahead_table(
    summary: Sequence[dict[str, Any]],
    held_out: Sequence[str],
    budgets: Sequence[int] = (64, 128, 256),
    methods: Sequence[str] = ("snapkv", "lookahead", "oracle"),
) -> str:
    """Question-aware scores of `full` and `methods` per budget: the families held out of training, their mean, the
    mean over the training families and over every family (macro averages of family means, over the families every
    column has)."""
    entries = [e for e in summary if e["mode"] == "question-aware" and e["family"] != "average"]
    columns = [(FULL, None)] + [(method, budget) for budget in budgets for method in methods]

    def score(family: str, method: str, budget) -> float | None:
        found = [e for e in entries if e["family"] == family and e["method"] == method and e["budget"] == budget]
        return found[0]["mean"] if found else None

    families = sorted({e["family"] for e in entries})
    complete = [f for f in families if all(score(f, m, b) is not None for m, b in columns)]
    header = ["family", *(m if b is None else f"{m} {b}" for m, b in columns)]
    lines = [header, ["---"] * len(header)]
    for family in [f for f in complete if f in held_out]:
        lines.append([f"{family} (held out)", *(f"{100 * score(family, m, b):.1f}" for m, b in columns)])
    groups = (
        ("mean, held out", [f for f in complete if f in held_out]),
        ("mean, training families", [f for f in complete if f not in held_out]),
        ("mean, all families", complete),
    )
    for label, group in groups:
        if group:
            means = [sum(score(f, m, b) for f in group) / len(group) for m, b in columns]
            lines.append([f"**{label}** ({len(group)})", *(f"**{100 * v:.1f}**" for v in means)])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
