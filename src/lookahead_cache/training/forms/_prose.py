"""Python's documentation prose (`documents.prose_topics`) as paragraphs of sentences, and seeded runs of it for
the forms that grow their context from it a sentence at a time."""

from __future__ import annotations

import random
import re
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from ...evaluation.documents import prose_topics
from ...evaluation.tasks._haystack import sentences

# A sentence may take at most this share of the prompt's tokens to be a unit of context: the fit keeps the largest
# size that fits, which ends within its 5 % leeway only if one more unit (with its separator and any label) does.
MAX_UNIT_SHARE = 1 / 30
# Characters of prose sure to take more tokens than a prompt holds: English prose takes 4 to 5 per token.
CHARS_PER_TOKEN_BOUND = 6
SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


@lru_cache(maxsize=1)
def prose_paragraphs() -> tuple[tuple[str, ...], ...]:
    """Every paragraph of the prose (`documents.prose_topics`), topics in sorted order, as its sentences.

    Only sentences that end as one are kept: those ending in a colon introduced a code example, which the prose
    leaves out, and would dangle.
    """
    kept = (
        tuple(sentence for sentence in sentences(paragraph) if SENTENCE_END.search(sentence))
        for paragraphs in prose_topics()
        for paragraph in paragraphs
    )
    return tuple(paragraph for paragraph in kept if paragraph)


@lru_cache(maxsize=1)
def prose_text() -> str:
    """The prose as one text, to count where a sentence occurs."""
    return "\n".join(" ".join(paragraph) for paragraph in prose_paragraphs())


@lru_cache(maxsize=16)
def short_paragraphs(tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> tuple[tuple[str, ...], ...]:
    """The prose paragraphs with only their sentences of `max_tokens` tokens or fewer, paragraphs left empty
    dropped."""
    unique = sorted({sentence for paragraph in prose_paragraphs() for sentence in paragraph})
    lengths = dict(zip(unique, map(len, tokenizer(unique, add_special_tokens=False)["input_ids"]), strict=True))
    kept = (tuple(s for s in paragraph if lengths[s] <= max_tokens) for paragraph in prose_paragraphs())
    return tuple(paragraph for paragraph in kept if paragraph)


def prose_run(tokenizer: PreTrainedTokenizerBase, context_length: int, rng: random.Random) -> list[tuple[str, ...]]:
    """Paragraphs of prose in their order from a seeded one on (wrapping around), enough to fill `context_length`
    tokens, each sentence short enough to be a unit of context at that length."""
    paragraphs = short_paragraphs(tokenizer, int(context_length * MAX_UNIT_SHARE))
    start = rng.randrange(len(paragraphs))
    run, chars = [], 0
    for paragraph in paragraphs[start:] + paragraphs[:start]:
        run.append(paragraph)
        chars += sum(map(len, paragraph))
        if chars >= CHARS_PER_TOKEN_BOUND * context_length:
            break
    return run
