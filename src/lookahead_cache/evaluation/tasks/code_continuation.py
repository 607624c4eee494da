from __future__ import annotations

import re
from collections.abc import Iterator
from typing import ClassVar

from transformers import PreTrainedTokenizerBase

from ._stdlib import STDLIB, ParsedFile, modules_filling, parse
from .base import Draft, Slot, TaskFamily

INTRO = "Below is the beginning of `{name}.py`, a module of the Python standard library.\n\n```python\n"
QUESTION = "Continue the code above: write its next line, and nothing else."
# Lines not worth predicting: blank, comment-only, closing brackets alone (`)`, `],`, `}):` ...) or triple quotes.
TRIVIAL = re.compile(r"\s*(#.*|[)\]}]+[,:;]?|\"\"\"|''')?\s*")
# A reference of several lines has at least this fraction of lines worth predicting (code, not blank lines, comments
# or docstrings).
MIN_CODE_FRACTION = 0.5


def code_lines(parsed: ParsedFile, lines: list[str]) -> list[bool]:
    """Per line of `lines` (the file's), whether it is worth predicting: neither trivial (`TRIVIAL`) nor prose (a
    docstring, the inside of a multi-line string)."""
    return [i + 1 not in parsed.string_lines and not TRIVIAL.fullmatch(line) for i, line in enumerate(lines)]


class CodeContinuation(TaskFamily):
    """Next-line code completion, as LongBench's LCC: the beginning of a real standard library module, cut at a
    line boundary, and the line that follows as the reference (stripped of its indentation).

    The cut is never before a blank, comment-only or lone-bracket line, nor in a docstring or multi-line string;
    samples of a build take distinct modules long enough for the length while there are some. Subclasses ask for
    more lines (`reference_lines`, with their `question`): the reference is then that many lines after the cut, as
    they are in the file, of which at least `MIN_CODE_FRACTION` pass the same filter.
    """

    name = "code_continuation"
    metric = "edit_similarity"
    max_new_tokens = 48
    description = "Next line of code after the beginning of a stdlib source file (LongBench LCC style)."
    # Lines of the reference, and the question asking for them.
    reference_lines: ClassVar[int] = 1
    question: ClassVar[str] = QUESTION

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        for name in slot.in_turn(self._modules(tokenizer, slot.context_length)):
            draft = self._draft(name)
            if draft.max_size:  # a module too short for the reference has nowhere to cut
                yield draft

    def _modules(self, tokenizer: PreTrainedTokenizerBase, context_length: int) -> list[str]:
        """The modules the samples of a build take in turn."""
        return modules_filling(context_length)

    def _draft(self, name: str) -> Draft:
        parsed = parse(name, STDLIB / f"{name}.py")
        lines = parsed.source.splitlines()
        cuts = self._cuts(parsed, lines)
        intro = INTRO.format(name=name)

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            cut = cuts[size - 1]
            return intro + "\n".join(lines[:cut]) + "\n```", self.question, (self._reference(lines[cut:]),)

        return Draft(render, max_size=len(cuts))

    def _cuts(self, parsed: ParsedFile, lines: list[str]) -> list[int]:
        """The lines the context may stop before: worth predicting, with `reference_lines` lines from there on in the
        file, enough of them worth predicting too. Docstrings and the inside of multi-line strings are prose, not
        code to predict."""
        count = self.reference_lines
        code = code_lines(parsed, lines)
        # Lines worth predicting among the first i: a prefix sum, for every window of `count` lines at once.
        before = [0]
        for is_code in code:
            before.append(before[-1] + is_code)
        return [
            i
            for i in range(1, len(lines) - count + 1)
            if code[i] and before[i + count] - before[i] >= MIN_CODE_FRACTION * count
        ]

    def _reference(self, following: list[str]) -> str:
        """The reference from the lines after the cut: the next line, stripped of its indentation; with several
        reference lines, that many, as they are in the file, joined by newlines."""
        if self.reference_lines == 1:
            return following[0].strip()
        return "\n".join(following[: self.reference_lines])
