"""Summarisation of one named section of a long document made of sections of Python's reference documentation."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks.base import Draft, Slot, TaskFamily
from ._sections import Section, fits_alongside, reference_topics, section_draft

QUESTION = "Summarise the section titled '{title}' in two sentences."
# Sections with fewer sentences of running text leave nothing to summarise beyond copying them.
MIN_SENTENCES = 4
# References longer than this would not fit in the answer's tokens.
MAX_REFERENCE_CHARS = 300


@lru_cache(maxsize=1)
def summaries() -> tuple[tuple[Section, str], ...]:
    """`(section, reference)` for each section with enough running text: the reference is its first two sentences
    of running text that do not introduce code (the opening of a reference section says what it is about)."""
    result = []
    for section in itertools.chain.from_iterable(reference_topics()):
        prose = [sentence for block in section.prose_sentences() for sentence in block]
        # Sentences that introduce a code block ("The following code:") say nothing of the section.
        reference = " ".join([sentence for sentence in prose if not sentence.endswith(":")][:2])
        if len(prose) >= MIN_SENTENCES and len(reference) <= MAX_REFERENCE_CHARS:
            result.append((section, reference))
    return tuple(result)


class SectionSummary(TaskFamily):
    """Summarisation within a document: sections of Python's reference documentation (`pydoc_data.topics`), each
    under a "## <title>" heading, and the request to summarise one of them, named by its title, in two sentences.

    Every title appears once in the document and the asked section is always whole inside it; the others are
    context to tell it from. The reference, the section's first two sentences of running text, is a stand-in:
    training only uses the model's own response.
    """

    name = "section_summary"
    metric = "rouge_l"
    max_new_tokens = 64
    description = "Summarise one titled section, in two sentences, among sections of Python's reference docs."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        pool = [summary for summary in summaries() if fits_alongside(summary[0], slot.context_length)]
        for section, reference in slot.in_turn(pool):
            if draft := section_draft(tokenizer, slot, section, QUESTION.format(title=section.title), reference):
                yield draft
