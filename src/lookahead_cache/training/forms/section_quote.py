"""Instruction following over a document: quote a named section's first or last sentence from sections of Python's
reference documentation."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks.base import Draft, Slot, TaskFamily
from ._sections import Section, fits_alongside, reference_topics, section_draft

QUESTION = "Quote the {position} sentence of the section titled '{title}', word for word."
# Sentences worth quoting: more than a label ("See also:"), at most a few lines.
MIN_WORDS = 6
MAX_SENTENCE_CHARS = 250


def is_quotable(sentence: str) -> bool:
    return len(sentence.split()) >= MIN_WORDS and len(sentence) <= MAX_SENTENCE_CHARS


@lru_cache(maxsize=1)
def quotes() -> tuple[tuple[Section, str, str], ...]:
    """`(section, "first" or "last", sentence)` for each section that opens, or closes, with a quotable sentence of
    running text."""
    result = []
    for section in itertools.chain.from_iterable(reference_topics()):
        blocks = section.prose_sentences()
        if blocks and blocks[0] and is_quotable(blocks[0][0]):
            result.append((section, "first", blocks[0][0]))
        # A last sentence ending with a colon introduces what the next section holds.
        if blocks and blocks[-1] and is_quotable(blocks[-1][-1]) and not blocks[-1][-1].endswith(":"):
            result.append((section, "last", blocks[-1][-1]))
    return tuple(result)


class SectionQuote(TaskFamily):
    """Instruction following over a document: sections of Python's reference documentation (`pydoc_data.topics`),
    each under a "## <title>" heading, and the instruction to quote the first or last sentence of one of them, named
    by its title, word for word; the reference is that sentence, its whitespace collapsed.

    Every title appears once in the document (sections repeated under one title across topics are kept once), the
    asked section is always whole inside it, and only sections opening (or closing) with a paragraph of running text
    are asked about, so the sentence asked for is well defined.
    """

    name = "section_quote"
    metric = "rouge_l"
    max_new_tokens = 80
    description = "Quote the first or last sentence of a titled section among sections of Python's reference docs."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        pool = [quote for quote in quotes() if fits_alongside(quote[0], slot.context_length)]
        for section, position, sentence in slot.in_turn(pool):
            question = QUESTION.format(position=position, title=section.title)
            if draft := section_draft(tokenizer, slot, section, question, sentence):
                yield draft
