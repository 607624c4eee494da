from __future__ import annotations

import math
import random
import string
from collections.abc import Iterator

from transformers import PreTrainedTokenizerBase

from ._haystack import distinct
from .base import Draft, Slot, TaskFamily

INTRO = (
    "Read the following coded text and track the frequency of each coded word. "
    "Find the three most frequently appeared coded words. "
)
QUESTION = (
    "Question: Do not provide any explanation. Please ignore the dots '....'. "
    "What are the three most frequently appeared words in the above coded text?"
)
# RULER's Zipf exponent: the word of rank k appears size * k**-2 / zeta(2) times, and zeta(2) = pi**2 / 6.
ALPHA = 2
ZETA = math.pi**2 / 6


class FrequentWords(TaskFamily):
    """RULER's frequent words extraction (fwe): random six-letter "coded words" with Zipf-distributed counts,
    shuffled; the most frequent one is replaced by dots to be ignored, and the next three are the references.

    The vocabulary has `context_length // 50` words, as in RULER; the text grows by its total word count.
    Hsieh et al., https://arxiv.org/abs/2404.06654
    """

    name = "frequent_words"
    metric = "string_match"
    max_new_tokens = 32
    description = "Name the 3 most frequent coded words of a long Zipf-distributed random text (RULER fwe)."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        # At least the dots and the three references.
        vocab_size = max(slot.context_length // 50, 4)
        vocabulary = distinct(lambda: "".join(rng.choices(string.ascii_lowercase, k=6)), vocab_size)
        vocabulary[0] = "..."
        shuffle_seed = rng.getrandbits(64)

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            counts = (int(size * rank**-ALPHA / ZETA) for rank in range(1, len(vocabulary) + 1))
            words = [word for word, count in zip(vocabulary, counts) for _ in range(count)]
            random.Random(shuffle_seed).shuffle(words)
            return INTRO + " ".join(words), QUESTION, tuple(vocabulary[1:4])

        # Every word takes at least one token.
        yield Draft(render, max_size=slot.context_length)
