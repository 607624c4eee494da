"""A long answer to read from a compressed cache: the next 60 lines of a stdlib module, for the `long-output` mode."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from .base import MIN_FILL
from .code_continuation import CodeContinuation

REFERENCE_LINES = 60


def continuation(prediction: str, lines: int) -> str:
    """The code a prediction continues with: the inside of its first Markdown code block (from its ```` ```python ````
    line to the next fence, or the end) when it has one, else the whole prediction; from its first line that is not
    blank, at most `lines` lines, joined by newlines and stripped."""
    kept = prediction.splitlines()
    fences = [i for i, line in enumerate(kept) if line.strip().startswith("```")]
    if fences:
        kept = kept[fences[0] + 1 : fences[1] if len(fences) > 1 else None]
    while kept and not kept[0].strip():
        kept.pop(0)
    return "\n".join(kept[:lines]).strip()


def levenshtein(a: str, b: str) -> int:
    """The edit distance of the `edit_similarity` metric (insertions, deletions, substitutions of one character each),
    by Myers' bit-parallel algorithm (Hyyrö's form for whole strings): one column of the table is a pair of bit
    vectors, so that 60 lines of code compare in milliseconds, not the seconds of the metric's row-by-row table."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    # Bits of the shorter string: per character, where it occurs.
    occurs: dict[str, int] = {}
    for i, char in enumerate(b):
        occurs[char] = occurs.get(char, 0) | 1 << i
    mask, last = (1 << len(b)) - 1, 1 << (len(b) - 1)
    positive, negative, distance = mask, 0, len(b)
    for char in a:
        equal = occurs.get(char, 0)
        vertical = equal | negative
        horizontal = (((equal & positive) + positive) ^ positive) | equal
        up = negative | ~(horizontal | positive)
        down = positive & horizontal
        if up & last:
            distance += 1
        elif down & last:
            distance -= 1
        up = (up << 1) | 1
        down = down << 1
        positive = (down | ~(vertical | up)) & mask
        negative = up & vertical & mask
    return distance


class CodeContinuationLong(CodeContinuation):
    """Code continuation with a long answer: the beginning of a real standard library module, cut at a line boundary
    as `code_continuation` cuts it, and the 60 lines that follow as the reference (as they are in the file, joined by
    newlines; at least half of them code rather than blank lines, comments or docstrings).

    Its answers run to 1024 tokens, long enough for decode-time eviction (`LookaheadCache(generation_budget=...)`,
    `lookahead-cache eval --modes long-output`) to evict while the cache decodes them. Scored with edit similarity
    over the whole texts: the metric module reads the first line of code of a prediction only (LongBench's next-line
    score), so `score` compares the prediction's first 60 lines of code (those of its first Markdown code block when it
    has one) with the reference, both stripped, as 1 - Levenshtein distance / the longer length, the metric's own
    formula.
    """

    name = "code_continuation_long"
    max_new_tokens = 1024
    description = "Next 60 lines of code after the beginning of a stdlib source file, a long answer (edit similarity)."
    reference_lines = REFERENCE_LINES
    question = f"Continue the code above: write its next {REFERENCE_LINES} lines, and nothing else."

    def _modules(self, tokenizer: PreTrainedTokenizerBase, context_length: int) -> list[str]:
        """Only the modules that fill `context_length` tokens from a cut: most have no 60 lines of code after a late
        enough cut, and samples taking the pool in turn would move past those onto the same next module, so that a
        build of several samples asked one module's continuation again and again. Found once per build (tokenizer
        and length)."""
        found = vars(self).setdefault("_pools", {}).get(context_length)
        if found is None or found[0] is not tokenizer:
            modules = super()._modules(tokenizer, context_length)
            found = (tokenizer, [name for name in modules if self._fills(tokenizer, name, context_length)])
            self._pools[context_length] = found
        return found[1]

    def _fills(self, tokenizer: PreTrainedTokenizerBase, name: str, context_length: int) -> bool:
        draft = self._draft(name)
        if not draft.max_size:
            return False
        length = self._fit(tokenizer, draft, context_length)[1]
        return MIN_FILL * context_length <= length <= context_length

    def score(self, predictions: list[str], references: list[list[str]]) -> list[float]:
        """Per prediction, the edit similarity of its first `reference_lines` lines of code with the best reference,
        each compared whole."""
        scores = []
        for prediction, sample_references in zip(predictions, references, strict=True):
            code = continuation(prediction, self.reference_lines)
            best = 0.0
            for reference in sample_references:
                reference = reference.strip()
                longest = max(len(code), len(reference))
                best = max(best, 1.0 - levenshtein(code, reference) / longest if longest else 1.0)
            scores.append(best)
        return scores
