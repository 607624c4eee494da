"""RULER's needle-in-a-haystack tasks; each `niah_*` family is this class with its RULER configuration."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Literal

from transformers import PreTrainedTokenizerBase

from ._haystack import (
    DEPTHS,
    NOISE,
    distinct,
    essay_words,
    insert_at_depths,
    noise_capacity,
    random_key,
    random_number,
    random_uuid,
    sentences,
)
from .base import Draft, Slot, TaskFamily

NEEDLE = "One of the special magic {kind} for {key} is: {value}."


class NeedleInAHaystack(TaskFamily):
    """Needles "One of the special magic numbers for <key> is: <value>." hidden at RULER's depths in a haystack
    (in the noise haystack too, where RULER picks any line); the question asks for the values of one or more keys,
    and every value asked is a reference.

    Class attributes (RULER's `synthetic.yaml` arguments):
        haystack: `"noise"`, the :data:`NOISE` sentences repeated one per line (RULER's "repeat"), or `"essay"`,
            prose, growing word by word, with the needles between its sentences.
        value_kind: `"numbers"` (7 digits) or `"uuids"`.
        num_keys: Needles with distinct keys; those not asked are distractors.
        num_values: Values, hence needles, per key.
        num_queries: Keys asked at once.

    Hsieh et al., "RULER: What's the Real Context Size of Your Long-Context Language Models?",
    https://arxiv.org/abs/2404.06654
    """

    metric = "string_match"
    haystack: ClassVar[Literal["noise", "essay"]] = "essay"
    value_kind: ClassVar[Literal["numbers", "uuids"]] = "numbers"
    num_keys: ClassVar[int] = 1
    num_values: ClassVar[int] = 1
    num_queries: ClassVar[int] = 1

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        keys = distinct(lambda: random_key(rng), self.num_keys)
        draw_value = (lambda: random_uuid(rng)) if self.value_kind == "uuids" else (lambda: random_number(rng))
        values = [distinct(draw_value, self.num_values) for _ in keys]
        needles = [
            NEEDLE.format(kind=self.value_kind, key=key, value=value)
            for key, key_values in zip(keys, values)
            for value in key_values
        ]
        rng.shuffle(needles)
        depths = rng.sample(DEPTHS, len(needles))
        asked = rng.sample(range(self.num_keys), self.num_queries)
        answers = tuple(value for i in asked for value in values[i])
        queries = [keys[i] for i in asked]
        query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
        # RULER's template, in the singular when a single value is asked.
        if len(answers) == 1:
            kind = self.value_kind[:-1]
            intro = f"A special magic {kind} is hidden within the following text."
            question = f"What is the special magic {kind} for {query} mentioned in the provided text?"
        else:
            kind = self.value_kind
            intro = f"Some special magic {kind} are hidden within the following text."
            question = f"What are all the special magic {kind} for {query} mentioned in the provided text?"
        intro += f" Make sure to memorize it. I will quiz you about the {kind} afterwards.\n"

        if self.haystack == "noise":
            max_size = noise_capacity(tokenizer, slot.context_length)
        else:
            words = essay_words(tokenizer, slot.context_length, rng.getrandbits(32))
            max_size = len(words)

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            if self.haystack == "noise":
                text = "\n".join(insert_at_depths([NOISE] * size, needles, depths))
            else:
                text = " ".join(insert_at_depths(sentences(" ".join(words[:size])), needles, depths))
            return intro + text, question, answers

        yield Draft(render, max_size)
