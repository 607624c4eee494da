"""SQuAD's token F1: word overlap between prediction and reference after normalisation, best reference kept."""

import re
import string
from collections import Counter

from lookahead_cache.evaluation.metrics.base import PerSampleMetric, f1_from_overlap

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> list[str]:
    """SQuAD's normalisation: lower case, no punctuation, no articles, split on whitespace."""
    return _ARTICLES.sub(" ", text.lower().translate(_PUNCTUATION)).split()


def token_f1(prediction: str, reference: str) -> float:
    predicted, expected = normalize_answer(prediction), normalize_answer(reference)
    if not predicted or not expected:
        # SQuAD v2: an empty side scores 1 only against another empty side.
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    return f1_from_overlap(common, len(predicted), len(expected))


class TokenF1(PerSampleMetric):
    description = (
        "Token-level F1 between prediction and reference after SQuAD normalisation (lower case, punctuation and "
        "articles removed), the maximum over the references; LongBench's metric for question answering."
    )
    reference_urls = ("https://rajpurkar.github.io/SQuAD-explorer/", "https://github.com/THUDM/LongBench")

    def score_sample(self, prediction: str, references: list[str]) -> float:
        return max(token_f1(prediction, reference) for reference in references)
