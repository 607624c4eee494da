from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from ._stdlib import Function, functions
from .base import Draft, Slot, TaskFamily

# Standard library modules and packages with distinct topics and about 30 or more documented functions each.
LABELS = ("asyncio", "calendar", "email", "ftplib", "inspect", "logging", "tarfile", "threading", "unittest", "xml")
INTRO = (
    "Below are the first sentences of docstrings from the Python standard library, each labelled with the module it "
    f"comes from: one of {', '.join(LABELS)}.\n\n"
)
QUESTION = "Label this docstring the same way, with the module name only.\n\nDocstring: {docstring}\nModule:"
# Shorter sentences ("Constructor.", "Close the file.") say nothing of their module.
MIN_CHARS = 25


def first_sentence(function: Function) -> str:
    """The first sentence of a function's docstring, on one line (docstrings often wrap it)."""
    return re.split(r"(?<=\.) ", " ".join(function.summary.split()), maxsplit=1)[0]


@lru_cache(maxsize=1)
def labelled_docstrings() -> dict[str, tuple[str, ...]]:
    """Each label's distinct docstring first sentences of :data:`MIN_CHARS` or more, sorted, leaving out any found
    under two labels, which no answer could settle."""
    summaries = {label: {first_sentence(function) for function in functions(label)} for label in LABELS}
    counts = Counter(line for lines in summaries.values() for line in lines)
    return {
        label: tuple(sorted(line for line in lines if counts[line] == 1 and len(line) >= MIN_CHARS))
        for label, lines in summaries.items()
    }


class FewShotClassification(TaskFamily):
    """In-context classification: many docstring first sentences labelled with their module (:data:`LABELS`), then an
    unlabelled one, held out from the examples, to label; its module is the reference.

    The asked label is drawn uniformly and the examples are interleaved label by label in a random order, so that
    every prefix of them is balanced and the context grows one example at a time.
    """

    name = "few_shot_classification"
    metric = "string_match"
    max_new_tokens = 16
    description = "Label a stdlib docstring with its module after many labelled examples (in-context learning)."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        # Each draft draws anew: at short lengths a long example can leave the prompt short of the fit, and another
        # draw of examples is as good a sample.
        while True:
            yield self._draft(slot)

    def _draft(self, slot: Slot) -> Draft:
        rng = slot.rng
        pools = labelled_docstrings()
        label = rng.choice(LABELS)
        query = rng.choice(pools[label])
        labels = rng.sample(LABELS, len(LABELS))
        shuffled = [
            [(line, name) for line in rng.sample(pools[name], len(pools[name])) if line != query] for name in labels
        ]
        examples = [
            f"Docstring: {line}\nModule: {name}"
            for pairs in itertools.zip_longest(*shuffled)
            for line, name in filter(None, pairs)
        ]
        question = QUESTION.format(docstring=query)

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            return INTRO + "\n\n".join(examples[:size]), question, (label,)

        return Draft(render, max_size=len(examples))
