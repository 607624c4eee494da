"""LongBench's code similarity: Levenshtein similarity between the first line of code predicted and the reference."""

from lookahead_cache.evaluation.metrics.base import PerSampleMetric

# Lines a model writes around code without being code: Markdown fences and comments (Python, C-like).
_NOT_CODE = ("```", "#", "//")


def first_code_line(prediction: str) -> str:
    """The first line that is neither blank, a comment nor a Markdown fence, stripped; empty if there is none."""
    for line in prediction.splitlines():
        line = line.strip()
        if line and not line.startswith(_NOT_CODE):
            return line
    return ""


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions of one character each), one DP row at a time."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def edit_similarity(prediction: str, reference: str) -> float:
    line, reference = first_code_line(prediction), reference.strip()
    longest = max(len(line), len(reference))
    return 1.0 - levenshtein(line, reference) / longest if longest else 1.0


class EditSimilarity(PerSampleMetric):
    description = (
        "1 - Levenshtein distance / length of the longer string, between the first line of the prediction that is "
        "not blank, a comment or a Markdown fence, and the reference line (both stripped); the maximum over the "
        "references. LongBench's code_sim_score, with an exact edit distance instead of fuzzywuzzy's ratio."
    )
    reference_urls = ("https://github.com/THUDM/LongBench",)

    def score_sample(self, prediction: str, references: list[str]) -> float:
        return max(edit_similarity(prediction, reference) for reference in references)
