"""The live modes beside the one-shot ones, at equal budgets, as paired comparisons.

* Streaming prefill: for each one-shot mode whose chunked twin has rows (`chunked-question-aware` beside
  `question-aware`, ...), one table per context length; rows (method, budget), columns the one-shot mean, the
  chunked mean and the difference chunked minus one-shot.
* Sessions: one table per context length; rows (method, budget), columns the mean of the method's cache with later
  turns kept whole (`unbounded`), with a session budget (`<method>@session`) and the difference session budget minus
  unbounded, then the cache's footprint: tokens kept per layer and KV head before the answer, the most held from the
  second turn on (`peak_kv_bytes` in tokens), and the bound a session budget keeps, the budget plus the longest turn
  after the first.
* Long answers (`long-output`): one table per context length; rows (method, budget), columns the mean of the
  method's cache keeping every generated token (`<method>`), with a generation budget (`<method>@decode`) and the
  difference generation budget minus kept, the mean `agreement` of the `@decode` answers with the kept ones (their
  common prefix over the kept answer's length), the tokens per layer and KV head the caches hold once the answer is
  decoded (`kept_after_answer`), and the bound a generation budget keeps, the budget plus the generation budget.

Every mean is over the samples that both sides of its comparison have (paired), a macro average of family means
like `summarize`'s `average`, with its percentile bootstrap interval from resampling samples within each family
(`statistics.bootstrap_interval`); a difference is resampled as the per-sample differences.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ...commands.eval import CHUNKED_MODES, LONG_OUTPUT_MODE, SESSION_MODE
from ..methods import FULL, GENERATION_BUDGET_SUFFIX, SESSION_BUDGET_SUFFIX, generation_budget_name
from .statistics import BOOTSTRAP_RESAMPLES, bootstrap_interval, budget_key
from .tables import budget_label, markdown_table

COMPARISONS_CAPTION = (
    "Paired comparisons at equal budgets: each mean (score x100) is over the samples both sides have, the mean of "
    "the family means, with its 95% interval (percentile bootstrap over samples within families, "
    f"{BOOTSTRAP_RESAMPLES} resamples, fixed seed; none for a single sample per family); the difference is "
    "resampled as per-sample differences."
)

Key = tuple[str, str, tuple[int, float], int]  # (mode, method, budget key, context length)


def live_mode_comparisons(rows: Iterable[dict[str, Any]]) -> str:
    """The markdown sections comparing the live modes with the one-shot ones (empty when no live mode has rows):
    a caption, then `### streaming prefill, <one-shot mode>, <length> tokens`, `### session, <length> tokens` and
    `### long output, <length> tokens` tables."""
    indexed = _index(rows)
    sections = []
    for chunked, one_shot in CHUNKED_MODES.items():
        for length, table in _chunked_tables(indexed, one_shot, chunked).items():
            sections.append(f"### streaming prefill ({chunked} against {one_shot}), {length} tokens\n\n{table}")
    for length, table in _session_tables(indexed).items():
        sections.append(f"### session: unbounded against session budget, {length} tokens\n\n{table}")
    for length, table in _long_output_tables(indexed).items():
        sections.append(
            f"### long output: generated tokens kept against a generation budget, {length} tokens\n\n{table}"
        )
    if not sections:
        return ""
    return "\n## Live modes beside the one-shot ones\n\n" + "\n\n".join([COMPARISONS_CAPTION, *sections]) + "\n"


def paired_means(
    first: dict[str, dict[str, Any]], second: dict[str, dict[str, Any]]
) -> tuple[int, list[tuple[float, float | None, float | None]]]:
    """Over the samples both row sets (by sample id) have: their count, and the mean with its interval of the first
    set's scores, of the second's, and of the differences first minus second."""
    common = sorted(set(first) & set(second))
    families: dict[str, list[tuple[float, float]]] = {}
    for sample_id in common:
        families.setdefault(first[sample_id]["family"], []).append(
            (float(first[sample_id]["score"]), float(second[sample_id]["score"]))
        )
    pairs = [np.array(families[family]) for family in sorted(families)]
    columns = [
        [pair[:, 0] for pair in pairs],
        [pair[:, 1] for pair in pairs],
        [pair[:, 0] - pair[:, 1] for pair in pairs],
    ]
    return len(common), [
        (float(np.mean([group.mean() for group in groups])), *bootstrap_interval(groups)) for groups in columns
    ]


def _index(rows: Iterable[dict[str, Any]]) -> dict[Key, dict[str, dict[str, Any]]]:
    """Rows by (mode, method, budget key, context length), then by sample id."""
    indexed: dict[Key, dict[str, dict[str, Any]]] = {}
    for row in rows:
        key = (row["mode"], row["method"], budget_key(row["budget"]), row["context_length"])
        indexed.setdefault(key, {})[row["sample_id"]] = row
    return indexed


def _configurations(indexed: dict[Key, dict], mode: str) -> dict[int, list[tuple[str, tuple[int, float]]]]:
    """Per context length, the (method, budget key) of `mode`'s rows: `full` first, then methods in the order their
    rows came, budgets ascending."""
    methods = list(dict.fromkeys([FULL, *(key[1] for key in indexed if key[0] == mode)]))
    found: dict[int, list[tuple[str, tuple[int, float]]]] = {}
    for key in sorted(
        (key for key in indexed if key[0] == mode), key=lambda key: (key[3], methods.index(key[1]), key[2])
    ):
        found.setdefault(key[3], []).append((key[1], key[2]))
    return found


def _chunked_tables(indexed: dict[Key, dict], one_shot: str, chunked: str) -> dict[int, str]:
    tables = {}
    for length, configurations in _configurations(indexed, chunked).items():
        lines = []
        for method, budget in configurations:
            reference = indexed.get((one_shot, method, budget, length))
            if not reference:
                continue
            rows = indexed[(chunked, method, budget, length)]
            n, (chunked_mean, one_shot_mean, difference) = paired_means(rows, reference)
            label = budget_label(next(iter(rows.values()))["budget"])
            lines.append(
                [method, label, str(n), _cell(one_shot_mean), _cell(chunked_mean), _cell(difference, signed=True)]
            )
        if lines:
            header = ["method", "budget", "samples", one_shot, chunked, "chunked - one-shot"]
            tables[length] = markdown_table(header, lines)
    return tables


def _session_tables(indexed: dict[Key, dict]) -> dict[int, str]:
    tables = {}
    for length, configurations in _configurations(indexed, SESSION_MODE).items():
        lines = []
        for method, budget in configurations:
            rows = indexed[(SESSION_MODE, method, budget, length)]
            label = budget_label(next(iter(rows.values()))["budget"])
            if method == FULL:
                n, (reference, _, _) = paired_means(rows, rows)
                lines.append(
                    [method, label, str(n), _cell(reference), "–", "–", _kept(rows.values()), _peak(rows.values()), "–"]
                )
                continue
            if method.endswith(SESSION_BUDGET_SUFFIX):
                continue
            bounded = indexed.get((SESSION_MODE, f"{method}{SESSION_BUDGET_SUFFIX}", budget, length))
            if not bounded:
                continue
            n, (bounded_mean, unbounded_mean, difference) = paired_means(bounded, rows)
            turn = max(int(row.get("turn_tokens") or 0) for row in [*rows.values(), *bounded.values()])
            budget_tokens = next(iter(rows.values()))["budget"]
            lines.append(
                [
                    method,
                    label,
                    str(n),
                    _cell(unbounded_mean),
                    _cell(bounded_mean),
                    _cell(difference, signed=True),
                    f"{_kept(rows.values())} / {_kept(bounded.values())}",
                    f"{_peak(rows.values())} / {_peak(bounded.values())}",
                    f"{budget_tokens + turn} ({budget_tokens} + {turn})",
                ]
            )
        if lines:
            header = [
                "method",
                "budget",
                "samples",
                "unbounded",
                "session budget",
                "session budget - unbounded",
                "mean kept tokens/head (unbounded / session budget)",
                "max peak tokens/head from turn 2 (unbounded / session budget)",
                "budget + longest later turn (max)",
            ]
            tables[length] = markdown_table(header, lines)
    return tables


def _long_output_tables(indexed: dict[Key, dict]) -> dict[int, str]:
    tables = {}
    for length, configurations in _configurations(indexed, LONG_OUTPUT_MODE).items():
        lines = []
        for method, budget in configurations:
            rows = indexed[(LONG_OUTPUT_MODE, method, budget, length)]
            label = budget_label(next(iter(rows.values()))["budget"])
            if method == FULL:
                n, (reference, _, _) = paired_means(rows, rows)
                lines.append([method, label, str(n), _cell(reference), "–", "–", "–", _after(rows.values()), "–"])
                continue
            if method.endswith(GENERATION_BUDGET_SUFFIX):
                continue
            decoding = indexed.get((LONG_OUTPUT_MODE, generation_budget_name(method), budget, length))
            if not decoding:
                continue
            n, (decoding_mean, kept_mean, difference) = paired_means(decoding, rows)
            paired = sorted(set(decoding) & set(rows))
            agreements = [decoding[i]["agreement"] for i in paired if decoding[i].get("agreement") is not None]
            agreement = float(np.mean(agreements)) if agreements else None
            generation = max(int(decoding[sample_id].get("generation_budget") or 0) for sample_id in paired)
            budget_tokens = next(iter(rows.values()))["budget"]
            lines.append(
                [
                    method,
                    label,
                    str(n),
                    _cell(kept_mean),
                    _cell(decoding_mean),
                    _cell(difference, signed=True),
                    "–" if agreement is None else f"{agreement:.2f}",
                    f"{_after(rows[i] for i in paired)} / {_after(decoding[i] for i in paired)}",
                    f"{budget_tokens + generation} ({budget_tokens} + {generation})",
                ]
            )
        if lines:
            header = [
                "method",
                "budget",
                "samples",
                "generated tokens kept",
                "generation budget",
                "generation budget - kept",
                "mean agreement",
                "mean tokens/head after the answer (kept / generation budget)",
                "budget + generation budget",
            ]
            tables[length] = markdown_table(header, lines)
    return tables


def _cell(value: tuple[float, float | None, float | None], signed: bool = False) -> str:
    mean, low, high = value
    number = "{:+.1f}" if signed else "{:.1f}"
    if low is None:
        return number.format(100 * mean)
    return f"{number.format(100 * mean)} [{number.format(100 * low)}, {number.format(100 * high)}]"


def _kept(rows: Iterable[dict[str, Any]]) -> str:
    """Mean tokens kept per layer and KV head before the answer."""
    return f"{np.mean([row['kept_tokens'] for row in rows]):.0f}"


def _after(rows: Iterable[dict[str, Any]]) -> str:
    """Mean tokens per layer and KV head the caches hold once the answer was decoded."""
    values = [row["kept_after_answer"] for row in rows if row.get("kept_after_answer") is not None]
    return f"{np.mean(values):.0f}" if values else "–"


def _peak(rows: Iterable[dict[str, Any]]) -> str:
    """The most tokens per layer and KV head held at once over the rows: `peak_kv_bytes` in the tokens of the row's
    own cache (its KV bytes over its kept tokens)."""
    peaks = [
        row["peak_kv_bytes"] * row["kept_tokens"] / row["kv_bytes"]
        for row in rows
        if row.get("peak_kv_bytes") is not None and row.get("kv_bytes")
    ]
    return f"{max(peaks):.0f}" if peaks else "–"
