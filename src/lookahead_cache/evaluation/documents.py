"""Long prompts built offline from English prose that ships with Python: the haystack of the demo, the benchmark
and the suite's prose tasks, and where needles go into a haystack.

The prose is the reference documentation in `pydoc_data.topics` (about 465k characters in 79 topics), so long
prompts need neither a download nor a data package. Code samples, grammar rules and headings are left out:
only paragraphs of running text are used, re-wrapped onto one line each.

Needles go into a haystack of units (paragraphs, sentences, lines) with `insert_at`, for the demo's needle task
here and for the suite's RULER-style tasks (`tasks._haystack.insert_at_depths`, `tasks._niah`), which differ in
what they insert and where.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch
from transformers import PreTrainedTokenizerBase

NEEDLE = "The secret code for the blue door is {code}."
QUESTION = "What is the secret code for the blue door?"
INSTRUCTION = "Read the document below, then answer the question that follows it."
# The needle is kept away from the very start and end, where even a cache without eviction finds it trivially.
DEPTH_RANGE = (0.1, 0.9)


@lru_cache(maxsize=1)
def prose_topics() -> tuple[tuple[str, ...], ...]:
    """The running-text paragraphs of each `pydoc_data` topic, topics in sorted order."""
    from pydoc_data.topics import topics

    result = []
    for name in sorted(topics):
        paragraphs = []
        for block in re.split(r"\n\s*\n", topics[name]):
            # Indented blocks are code or grammar, and headings are underlined with ***/===/---.
            if not block[:1].isalpha() or re.search(r"\*\*\*|===|---", block) or len(block) < 80:
                continue
            paragraphs.append(" ".join(block.split()))
        if paragraphs:
            result.append(tuple(paragraphs))
    return tuple(result)


def haystack_ids(tokenizer: PreTrainedTokenizerBase, num_tokens: int, seed: int = 0) -> list[int]:
    """The first `num_tokens` token ids of the prose, its topics in a seeded order and paragraphs in their own.

    Raises:
        ValueError: if `num_tokens` is not positive or exceeds the prose available (about 40k tokens).
    """
    if num_tokens < 1:
        raise ValueError(f"num_tokens={num_tokens} must be a positive number of tokens.")
    topics = list(prose_topics())
    random.Random(seed).shuffle(topics)
    # Encoded as one text, because a paragraph break tokenises differently from the same break encoded alone.
    ids = tokenizer.encode("\n\n".join(p for paragraphs in topics for p in paragraphs), add_special_tokens=False)
    if len(ids) < num_tokens:
        raise ValueError(
            f"num_tokens={num_tokens} exceeds the {len(ids)} tokens of prose in pydoc_data; ask for a shorter prompt."
        )
    return ids[:num_tokens]


def insert_at(units: Sequence[str], inserts: Sequence[str], positions: Sequence[int]) -> list[str]:
    """`units` with `inserts[i]` placed before `units[positions[i]]` (at the end for `len(units)`), so that no unit
    is cut; inserts at the same position keep their order."""
    result: list[str] = []
    start = 0
    for i in sorted(range(len(inserts)), key=positions.__getitem__):
        result += units[start : positions[i]]
        result.append(inserts[i])
        start = positions[i]
    return result + list(units[start:])


@dataclass(frozen=True)
class NeedleTask:
    """A document with one needle sentence hidden in it, and the question that asks for the needle.

    Attributes:
        document: The prose with the needle inserted as its own paragraph.
        code: The four-digit code the needle states, and that a correct answer contains.
        depth: Where the needle sits, as a fraction of the document's characters.
    """

    document: str
    code: str
    depth: float

    @property
    def needle(self) -> str:
        return NEEDLE.format(code=self.code)

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": f"{INSTRUCTION}\n\n{self.document}\n\nQuestion: {QUESTION}"}]

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
        """`[1, prompt_len]` ids of the question in the model's chat template, ready for the answer."""
        encoded = tokenizer.apply_chat_template(
            self.messages(), add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        return encoded["input_ids"]

    def is_answered_by(self, answer: str) -> bool:
        return self.code in answer


def build_needle_task(tokenizer: PreTrainedTokenizerBase, context_tokens: int, seed: int = 0) -> NeedleTask:
    """A needle task whose chat prompt is about `context_tokens` tokens long.

    The seed picks the prose (see `haystack_ids`), the code and the depth of the needle. The prose is cut to the
    token budget left after the chat template, question and needle, so the prompt length is within a few
    tokens of `context_tokens` (re-tokenisation at the joins may merge or split a token).

    Raises:
        ValueError: if `context_tokens` leaves no room for prose, or exceeds the prose available.
    """
    rng = random.Random(seed)
    code = str(rng.randint(1000, 9999))
    depth = rng.uniform(*DEPTH_RANGE)
    empty = NeedleTask(document=NEEDLE.format(code=code), code=code, depth=0.0)
    overhead = empty.prompt_ids(tokenizer).shape[-1] + 2  # +2: the paragraph breaks around the needle
    if context_tokens <= overhead:
        raise ValueError(
            f"context_tokens={context_tokens} leaves no room for the document: the chat template, question and "
            f"needle alone take {overhead} tokens."
        )
    prose = tokenizer.decode(haystack_ids(tokenizer, context_tokens - overhead, seed))
    paragraphs = prose.strip().split("\n\n")
    # Insert at the paragraph break closest to the seeded depth, so no sentence is cut by the needle.
    breaks = [0]
    for paragraph in paragraphs:
        breaks.append(breaks[-1] + len(paragraph) + 2)
    index = min(range(len(breaks)), key=lambda i: abs(breaks[i] / breaks[-1] - depth))
    document = "\n\n".join(insert_at(paragraphs, [empty.needle], [index]))
    return NeedleTask(document=document, code=code, depth=breaks[index] / breaks[-1])
