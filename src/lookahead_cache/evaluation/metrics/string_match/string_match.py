"""RULER's string match: the fraction of the references that the prediction contains, ignoring case."""

from lookahead_cache.evaluation.metrics.base import PerSampleMetric


class StringMatch(PerSampleMetric):
    description = (
        "Fraction of the references found in the prediction, case-insensitively (RULER's string_match_all): a "
        "needle task asking for four values scores 0.5 when two of them are in the answer, wherever they are."
    )
    reference_urls = ("https://github.com/NVIDIA/RULER/blob/main/scripts/eval/synthetic/constants.py",)

    def score_sample(self, prediction: str, references: list[str]) -> float:
        prediction = prediction.lower()
        return sum(reference.lower() in prediction for reference in references) / len(references)
