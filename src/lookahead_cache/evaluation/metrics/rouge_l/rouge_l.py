"""ROUGE-L F-measure: longest common subsequence of lower-cased words, as `rouge_score` computes it unstemmed."""

import re

from lookahead_cache.evaluation.metrics.base import PerSampleMetric, f1_from_overlap

_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    """`rouge_score`'s default tokenisation: lower case, runs of letters and digits."""
    return _WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, one DP row at a time."""
    previous = [0] * (len(b) + 1)
    for item in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if item == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    predicted, expected = words(prediction), words(reference)
    return f1_from_overlap(lcs_length(predicted, expected), len(predicted), len(expected))


class RougeL(PerSampleMetric):
    description = (
        "ROUGE-L F-measure (beta = 1) on lower-cased alphanumeric words, without stemming: the longest common "
        "subsequence of prediction and reference, the maximum over the references. Used for summaries."
    )
    reference_urls = (
        "https://aclanthology.org/W04-1013/",
        "https://github.com/google-research/google-research/tree/master/rouge",
    )

    def score_sample(self, prediction: str, references: list[str]) -> float:
        return max(rouge_l(prediction, reference) for reference in references)
