from __future__ import annotations

import random
from collections.abc import Iterator
from typing import ClassVar

from transformers import PreTrainedTokenizerBase

from ._haystack import word_list
from .base import Draft, Slot, TaskFamily

INTRO = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n"
)
QUESTION = "Question: What are the {num_common} most common words in the above list?"


class CommonWords(TaskFamily):
    """RULER's common words extraction (cwe): a shuffled, numbered list in which `num_common` words come back many
    times and the others a few; the question asks for the most common ones, all of which are references.

    Repetitions follow RULER: 6 against 1 below 4096 tokens, 30 against 3 from 4096 on; the list grows by
    uncommon words. Words come from :func:`word_list` (RULER draws them from `wonderwords`).
    Hsieh et al., https://arxiv.org/abs/2404.06654
    """

    name = "common_words"
    metric = "string_match"
    max_new_tokens = 64
    description = "Name the 10 words repeated most often in a long numbered list of words (RULER cwe)."
    num_common: ClassVar[int] = 10

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        common_repeats, uncommon_repeats = (6, 1) if slot.context_length < 4096 else (30, 3)
        vocabulary = word_list()
        # Every entry ("12. word") takes at least two tokens.
        max_size = min(len(vocabulary) - self.num_common, slot.context_length // (2 * uncommon_repeats))
        words = rng.sample(vocabulary, self.num_common + max_size)
        common, uncommon = words[: self.num_common], words[self.num_common :]
        shuffle_seed = rng.getrandbits(64)

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            entries = common * common_repeats + uncommon[:size] * uncommon_repeats
            random.Random(shuffle_seed).shuffle(entries)
            listing = " ".join(f"{i}. {word}" for i, word in enumerate(entries, start=1))
            return INTRO + listing, QUESTION.format(num_common=self.num_common), tuple(common)

        yield Draft(render, max_size)
