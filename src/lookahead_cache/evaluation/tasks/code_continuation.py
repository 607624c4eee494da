from __future__ import annotations

import re
from collections.abc import Iterator

from transformers import PreTrainedTokenizerBase

from ._stdlib import STDLIB, modules_filling, parse
from .base import Draft, Slot, TaskFamily

INTRO = "Below is the beginning of `{name}.py`, a module of the Python standard library.\n\n```python\n"
QUESTION = "Continue the code above: write its next line, and nothing else."
# Lines not worth predicting: blank, comment-only, closing brackets alone (`)`, `],`, `}):` ...) or triple quotes.
TRIVIAL = re.compile(r"\s*(#.*|[)\]}]+[,:;]?|\"\"\"|''')?\s*")


class CodeContinuation(TaskFamily):
    """Next-line code completion, as LongBench's LCC: the beginning of a real standard library module, cut at a
    line boundary, and the line that follows as the reference (stripped of its indentation).

    The cut is never before a blank, comment-only or lone-bracket line, nor in a docstring or multi-line string;
    samples of a build take distinct modules long enough for the length while there are some.
    """

    name = "code_continuation"
    metric = "edit_similarity"
    max_new_tokens = 48
    description = "Next line of code after the beginning of a stdlib source file (LongBench LCC style)."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        for name in slot.in_turn(modules_filling(slot.context_length)):
            yield self._draft(name)

    def _draft(self, name: str) -> Draft:
        parsed = parse(name, STDLIB / f"{name}.py")
        lines = parsed.source.splitlines()
        # Docstrings and the inside of multi-line strings are prose, not code to predict.
        cuts = [
            i
            for i, line in enumerate(lines)
            if i > 0 and i + 1 not in parsed.string_lines and not TRIVIAL.fullmatch(line)
        ]
        intro = INTRO.format(name=name)

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            cut = cuts[size - 1]
            return intro + "\n".join(lines[:cut]) + "\n```", QUESTION, (lines[cut].strip(),)

        return Draft(render, max_size=len(cuts))
