from __future__ import annotations

import re
from collections.abc import Iterator

from transformers import PreTrainedTokenizerBase

from ._stdlib import BYTES_PER_TOKEN, STDLIB, ParsedFile, modules_filling, parse
from .base import Draft, Slot, TaskFamily

INTRO = "Below is the source code of a Python standard library module, its module docstring removed.\n\n```python\n"
QUESTION = "Describe what this module does, in a few sentences, as its module docstring would."
# Docstrings that read as a description: a few sentences, not a screenful, and no doctest session.
DOCSTRING_CHARS = (200, 1200)
MIN_SENTENCES = 3


def describes(parsed: ParsedFile) -> bool:
    """Whether the module's docstring is a prose description of it, usable as a reference summary."""
    docstring = parsed.docstring or ""
    return (
        DOCSTRING_CHARS[0] <= len(docstring) <= DOCSTRING_CHARS[1]
        and len(re.findall(r"[a-z)]\.(?:\s|$)", docstring)) >= MIN_SENTENCES
        and ">>>" not in docstring
    )


class Summary(TaskFamily):
    """Summarisation with a free-form answer: the source of a standard library module whose module docstring was
    removed (cut at a line boundary to the length), and that docstring as the reference, scored with ROUGE-L.

    Only modules whose docstring describes them in prose qualify (see :func:`describes`); samples of a build take
    distinct modules while there are some.
    """

    name = "summary"
    metric = "rouge_l"
    max_new_tokens = 128
    description = "Describe a stdlib module from its source; the removed module docstring is the reference."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        parsed = {name: parse(name, STDLIB / f"{name}.py") for name in modules_filling(slot.context_length)}
        # Long enough still once the docstring is removed.
        needed = BYTES_PER_TOKEN * slot.context_length
        eligible = [
            name
            for name, module in parsed.items()
            if describes(module) and len(module.source) - len(module.docstring) >= needed
        ]
        if not eligible:
            raise ValueError(
                f"context_length={slot.context_length} exceeds the text available to {self.name}: no standard "
                "library module long enough for it has a docstring that describes it. Use a shorter context_length."
            )
        for name in slot.in_turn(eligible):
            yield self._draft(parsed[name])

    def _draft(self, parsed: ParsedFile) -> Draft:
        first, last = parsed.docstring_lines
        lines = parsed.source.splitlines()
        lines = lines[: first - 1] + lines[last:]

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            return INTRO + "\n".join(lines[:size]) + "\n```", QUESTION, (parsed.docstring,)

        return Draft(render, max_size=len(lines))
