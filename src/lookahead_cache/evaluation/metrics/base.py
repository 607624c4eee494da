"""What the four local metrics share: one score per sample against its references, and their mean."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import datasets
import evaluate


def f1_from_overlap(common: int, predicted: int, expected: int) -> float:
    """Harmonic mean of precision `common / predicted` and recall `common / expected`; 0 without overlap."""
    if common == 0:
        return 0.0
    precision, recall = common / predicted, common / expected
    return 2 * precision * recall / (precision + recall)


class PerSampleMetric(evaluate.Metric, ABC):
    """An `evaluate.Metric` scoring each prediction against a list of references on its own.

    `compute(predictions=[...], references=[[...], ...])` returns `{"score": mean, "scores": [...]}`, the
    per-sample scores in [0, 1] being what the evaluation reports next to the mean (per depth, per length, ...).
    Subclasses set `description` and implement :meth:`score_sample`; being abstract, this class is skipped by
    `evaluate.load`, which picks the concrete subclass defined in the loaded script.
    """

    description: ClassVar[str]
    reference_urls: ClassVar[tuple[str, ...]] = ()

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.description,
            citation="",
            inputs_description=(
                "predictions: list of generated strings. references: list of lists of reference strings, "
                "one list per prediction. Returns score (the mean) and scores (one float in [0, 1] per prediction)."
            ),
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=list(self.reference_urls),
        )

    def _compute(self, predictions: list[str], references: list[list[str]]) -> dict[str, float | list[float]]:
        if not predictions:
            raise ValueError(f"{type(self).__name__}.compute needs at least one prediction; got none.")
        scores = []
        for prediction, sample_references in zip(predictions, references):
            if not sample_references:
                raise ValueError(f"{type(self).__name__} needs at least one reference per prediction; got none.")
            scores.append(float(self.score_sample(prediction, list(sample_references))))
        return {"score": sum(scores) / len(scores), "scores": scores}

    @abstractmethod
    def score_sample(self, prediction: str, references: list[str]) -> float:
        """The score in [0, 1] of one prediction against its references."""
