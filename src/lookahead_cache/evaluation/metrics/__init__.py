"""Local `evaluate` metric modules, one folder each, so that scoring never fetches a script from the Hub.

`evaluate.load` on a local folder reads `<folder>/<folder name>.py` and never touches the network, so no offline
switch is needed. Every metric returns `{"score": mean, "scores": [one float in [0, 1] per sample]}`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import evaluate

METRICS_DIR = Path(__file__).parent
METRIC_NAMES = ("string_match", "token_f1", "edit_similarity", "rouge_l")


def load_metric(name: str) -> evaluate.EvaluationModule:
    """The metric module `name` (one of :data:`METRIC_NAMES`), loaded from this package's folder."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}. Available metrics: {', '.join(METRIC_NAMES)}.")
    # Imported here: the task families use METRIC_NAMES without paying for `evaluate` and `datasets`.
    import evaluate

    return evaluate.load(str(METRICS_DIR / name))


def score(name: str, predictions: list[str], references: list[list[str]]) -> list[float]:
    """Per-sample scores of `predictions` against their `references` (a list of strings per prediction)."""
    return load_metric(name).compute(predictions=predictions, references=references)["scores"]


__all__ = ["METRIC_NAMES", "load_metric", "score"]
