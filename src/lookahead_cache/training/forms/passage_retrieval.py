"""Passage retrieval: which of many numbered paragraphs a quoted sentence comes from (LongBench's
passage_retrieval_en)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._haystack import DEPTHS, insert_at_depths
from ...evaluation.tasks.base import Draft, Slot, TaskFamily
from ._prose import MAX_UNIT_SHARE, prose_paragraphs, prose_run, prose_text, short_paragraphs

# Paragraphs longer than this are split into passages of this many sentences, so that a passage reads as one.
MAX_PASSAGE_SENTENCES = 4
# A quoted sentence shorter than this ("Classes are callable.") is too plain to point at one passage.
MIN_QUOTE_CHARS = 50

INTRO = "Below are numbered paragraphs from the Python documentation.\n\n"
QUESTION = (
    'Which paragraph does this sentence come from? "{quote}" Answer with the paragraph label only, in the form '
    '"Paragraph N".'
)


@lru_cache(maxsize=1)
def distinctive_sentences() -> frozenset[str]:
    """The sentences that quoting points at one place of the prose with: long ones that occur once in it."""
    text = prose_text()
    return frozenset(
        sentence
        for paragraph in prose_paragraphs()
        for sentence in paragraph
        if len(sentence) >= MIN_QUOTE_CHARS and text.count(sentence) == 1
    )


def passages(paragraphs: Sequence[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """`paragraphs` split into passages of at most :data:`MAX_PASSAGE_SENTENCES` sentences."""
    return [
        paragraph[start : start + MAX_PASSAGE_SENTENCES]
        for paragraph in paragraphs
        for start in range(0, len(paragraph), MAX_PASSAGE_SENTENCES)
    ]


class PassageRetrieval(TaskFamily):
    """Passage retrieval: numbered passages of Python's documentation, and a sentence quoted from one of them; the
    answer is that passage's label, "Paragraph N".

    The quoted sentence occurs once in the whole documentation and is long, so exactly one passage holds it. The
    other passages are the paragraphs around a seeded place of the documentation (split into passages of at most
    :data:`MAX_PASSAGE_SENTENCES` sentences), which makes neighbours of similar topic; the asked passage sits at one
    of RULER's depths, and the labels are numbered after it is placed. The context grows a sentence at a time, the
    last passage possibly cut.
    """

    name = "passage_retrieval"
    metric = "string_match"
    max_new_tokens = 16
    description = "Which numbered documentation paragraph a quoted sentence comes from (LongBench passage retrieval)."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        max_tokens = int(slot.context_length * MAX_UNIT_SHARE)
        distinctive = distinctive_sentences()
        candidates = [
            (passage, sentence)
            for passage in passages(short_paragraphs(tokenizer, max_tokens))
            for sentence in passage
            if sentence in distinctive
        ]
        target, quote = rng.choice(candidates)
        others = [passage for passage in passages(prose_run(tokenizer, slot.context_length, rng)) if passage != target]
        asked = " ".join(target)
        units = [(i, sentence) for i, passage in enumerate(others) for sentence in passage]
        depth = rng.choice(DEPTHS)
        question = QUESTION.format(quote=quote)

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            kept: dict[int, list[str]] = {}
            for i, sentence in units[:size]:
                kept.setdefault(i, []).append(sentence)
            texts = insert_at_depths([" ".join(passage) for passage in kept.values()], [asked], [depth])
            numbered = [f"Paragraph {number}: {text}" for number, text in enumerate(texts, 1)]
            return INTRO + "\n\n".join(numbered), question, (f"Paragraph {texts.index(asked) + 1}",)

        yield Draft(render, max_size=len(units))
