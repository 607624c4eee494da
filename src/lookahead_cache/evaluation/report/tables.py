"""Markdown tables: the generic padded table, the accuracy summary (one table per mode and context length), the
eviction cost per method, the lookahead comparison, settings, and `lookahead-cache bench` results."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..methods import FULL
from .statistics import AVERAGE, BOOTSTRAP_RESAMPLES, budget_key, by_table, family_order, is_token_budget

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
MIB = 2**20


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table with padded columns, readable as plain text too."""
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (width + 2) for width in widths) + "|", *map(line, rows)])


def markdown_summary(summary: Sequence[dict[str, Any]]) -> str:
    """The summary as markdown: a caption, then one table per (mode, context length).

    Rows are (method, budget), `full` first and then in summary order; columns are the families and `average`.
    Scores are shown x100 with their interval bounds, since a bootstrap interval is not symmetric around the mean.
    """
    sections = [CAPTION]
    for (mode, length), table in summary_tables(summary).items():
        sections.append(f"### {mode}, {length} tokens\n\n{table}")
    return "\n\n".join(sections) + "\n"


def summary_tables(summary: Sequence[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """One markdown table per (mode, context length): rows (method, budget), columns families then `average`."""
    tables = {}
    for key, entries in by_table(summary).items():
        families = family_order(entries)
        cells: dict[tuple[str, tuple[int, float]], dict[str, str]] = {}
        for entry in sorted(entries, key=lambda entry: entry["method"] != FULL):
            row = cells.setdefault((entry["method"], budget_key(entry["budget"])), {})
            row["budget"] = budget_label(entry["budget"])
            row[entry["family"]] = _cell(entry)
        table = [
            [method, row["budget"], *(row.get(family, "–") for family in families)]
            for (method, _), row in cells.items()
        ]
        tables[key] = markdown_table(["method", "budget", *families], table)
    return tables


def _cell(entry: dict[str, Any]) -> str:
    if entry["ci_low"] is None:
        return f"{100 * entry['mean']:.1f} (n={entry['n']})"
    return f"{100 * entry['mean']:.1f} [{100 * entry['ci_low']:.1f}, {100 * entry['ci_high']:.1f}] (n={entry['n']})"


def budget_label(budget: int | float | None) -> str:
    if budget is None:
        return "–"
    return str(budget) if is_token_budget(budget) else f"{100 * budget:g}%"


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


def settings_table(settings: dict[str, Any]) -> str:
    rows = []
    for key in sorted(settings):
        value = settings[key]
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        rows.append([key, text.replace("|", "\\|")])
    return markdown_table(["setting", "value"], rows)


def format_results(rows: list[dict[str, Any]]) -> str:
    """The benchmark rows as a markdown table; ratios are against the full cache of the same prompt."""
    header = [
        "prompt",
        "cache",
        "kept/head",
        "prefill s",
        "overhead",
        "fastest overhead",
        "FLOP overhead",
        "decode ms/tok",
        "decode speedup",
        "KV MiB",
        "KV ratio",
        "peak KV MiB",
        "peak KV ratio",
        "peak mem MiB",
        "peak mem ratio",
    ]
    table = []
    for row in rows:
        memory, memory_ratio = row["peak_prefill_memory_bytes"], row["peak_memory_ratio"]
        table.append(
            [
                str(row["length"]),
                row["cache"],
                f"{row['kept_tokens_per_head']:.0f}",
                f"{row['prefill_s']:.3f}",
                f"{100 * row['prefill_overhead']:+.1f}%",
                _percent(row.get("prefill_overhead_fastest"), 1),
                _percent(row.get("prefill_flops_overhead"), 2),
                f"{row['decode_ms_per_token']:.2f}",
                f"{row['decode_speedup']:.2f}x",
                f"{row['kv_bytes_after_prefill'] / MIB:.1f}",
                f"{row['kv_ratio']:.3f}x",
                f"{row['peak_kv_bytes'] / MIB:.1f}",
                f"{row['peak_kv_ratio']:.3f}x",
                "n/a" if memory is None else f"{memory / MIB:.1f}",
                "n/a" if memory_ratio is None else f"{memory_ratio:.2f}x",
            ]
        )
    return markdown_table(header, table)


def _percent(ratio: float | None, decimals: int) -> str:
    # None for rows of files written before the benchmark measured it.
    return "n/a" if ratio is None else f"{100 * ratio:+.{decimals}f}%"
