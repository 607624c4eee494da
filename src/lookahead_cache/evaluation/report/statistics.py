"""Predictions rows -> summary statistics: reading and checking `predictions*.jsonl`, mean scores with percentile
bootstrap intervals per (mode, context length, family, method, budget), and macro averages over families.

Everything is ordered deterministically, so that a regenerated report only differs where the results do.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...run_folder import read_jsonl
from ..methods import FULL

AVERAGE = "average"
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
REQUIRED_FIELDS = ("sample_id", "family", "context_length", "mode", "method", "budget")
SCORE_FIELDS = ("metric", "prediction", "answers")


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
            rows[(row["sample_id"], row["mode"], row["method"], budget_key(row["budget"]))] = row
    return _fill_missing_scores(list(rows.values()))


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
        key = (row["mode"], row["context_length"], row["method"], budget_key(row["budget"]))
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


def by_table(summary: Iterable[dict[str, Any]]) -> dict[tuple[str, int], list[dict[str, Any]]]:
    tables: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for entry in summary:
        tables.setdefault((entry["mode"], entry["context_length"]), []).append(entry)
    return tables


def family_order(entries: Iterable[dict[str, Any]]) -> list[str]:
    """Column and panel order: families sorted, then the group averages in the order summarized, the macro average
    last."""
    names = list(dict.fromkeys(entry["family"] for entry in entries))
    averages = [name for name in names if name.startswith(f"{AVERAGE} (")]
    return sorted(set(names) - {AVERAGE, *averages}) + averages + ([AVERAGE] if AVERAGE in names else [])


def budget_key(budget: int | float | None) -> tuple[int, float]:
    """A sortable key that keeps the budget's kind: 1 token and a fraction of 1.0 compare equal in Python."""
    if budget is None:
        return (0, 0.0)
    return (1, float(budget)) if is_token_budget(budget) else (2, float(budget))


def is_token_budget(budget: int | float | None) -> bool:
    return isinstance(budget, int) and not isinstance(budget, bool)


def is_fraction(budget: int | float | None) -> bool:
    return isinstance(budget, float)


def _entry(
    mode: str, length: int, family: str, method: str, budget: int | float | None, samples: list[np.ndarray]
) -> dict[str, Any]:
    low, high = bootstrap_interval(samples)
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


def bootstrap_interval(samples: list[np.ndarray]) -> tuple[float | None, float | None]:
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


def _fill_missing_scores(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Score the rows that lack a score, one metric call per family and metric so that metrics with a setup cost pay
    it few times (a family may score its answers its own way, `tasks.score_predictions`)."""
    unscored: dict[tuple[str, str], list[int]] = {}
    for i, row in enumerate(rows):
        if row.get("score") is None:
            unscored.setdefault((row["family"], row["metric"]), []).append(i)
    if not unscored:
        return rows
    from ..tasks import score_predictions

    rows = list(rows)
    for (family, metric), indices in unscored.items():
        values = score_predictions(
            family, metric, [rows[i]["prediction"] for i in indices], [rows[i]["answers"] for i in indices]
        )
        for i, value in zip(indices, values, strict=True):
            rows[i] = {**rows[i], "score": value}
    return rows
