"""Haystacks, needles and word lists for the RULER-style synthetic families, all built from text shipped with Python.

RULER (Hsieh et al., https://arxiv.org/abs/2404.06654, https://github.com/NVIDIA/RULER) takes its essay haystack
from Paul Graham's essays and its words from `wonderwords`; here the prose is Python's own documentation
(`pydoc_data.topics`, see `..documents`) and the words come from it too, so nothing is downloaded.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Callable, Sequence
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from ..documents import haystack_ids, insert_at, prose_topics

# RULER's "repeat" haystack, and its noise between variable assignments.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
# RULER's needle depths: 40 percentages evenly spaced from 0 to 100.
DEPTHS = tuple(round(100 * i / 39) for i in range(40))


def essay_words(tokenizer: PreTrainedTokenizerBase, num_tokens: int, seed: int) -> list[str]:
    """Words of prose (see `haystack_ids`) taking more than `num_tokens` tokens once joined by spaces.

    RULER's essay haystack grows word by word, and needles go between the sentences of the words kept; paragraph
    breaks are collapsed, as RULER does.
    """
    # Twice the tokens: collapsing the paragraph breaks loses some.
    return tokenizer.decode(haystack_ids(tokenizer, 2 * num_tokens, seed)).split()


def sentences(text: str) -> list[str]:
    """`text` split after every ".", "!" or "?" followed by a capital: a rough `nltk.sent_tokenize`, as RULER uses."""
    return re.split(r"(?<=[.!?]) (?=[A-Z])", text)


def noise_capacity(tokenizer: PreTrainedTokenizerBase, num_tokens: int) -> int:
    """How many repetitions of :data:`NOISE` are sure to take more than `num_tokens` tokens."""
    return num_tokens // len(tokenizer.encode(NOISE, add_special_tokens=False)) + 1


@lru_cache(maxsize=1)
def word_list() -> tuple[str, ...]:
    """Distinct lower-case words of 4 to 10 letters from the prose, sorted, none inside another ("accept" goes,
    "accepted" stays), so that naming one word never string-matches another."""
    candidates = sorted(
        {w for paragraphs in prose_topics() for p in paragraphs for w in re.findall(r"\b[a-z]{4,10}\b", p)}
    )
    joined = " ".join(candidates)
    return tuple(word for word in candidates if joined.count(word) == 1)


def random_key(rng: random.Random) -> str:
    """A needle key in RULER's adjective-noun style: two words joined by a hyphen, which prose never contains."""
    words = word_list()
    return f"{rng.choice(words)}-{rng.choice(words)}"


def random_number(rng: random.Random, digits: int = 7) -> str:
    return str(rng.randint(10 ** (digits - 1), 10**digits - 1))


def random_uuid(rng: random.Random) -> str:
    """A version-4 UUID from the seeded generator (`uuid.uuid4()` would read the OS's randomness)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def distinct(draw: Callable[[], str], count: int) -> list[str]:
    """`count` different values of `draw()`, in the order drawn."""
    values: list[str] = []
    while len(values) < count:
        value = draw()
        if value not in values:
            values.append(value)
    return values


def insert_at_depths(units: Sequence[str], inserts: Sequence[str], depths: Sequence[int]) -> list[str]:
    """`units` with `inserts[i]` placed `depths[i]` percent of the way through, at a unit boundary, as RULER places
    its needles; inserts at the same place keep their order."""
    return insert_at(units, inserts, [len(units) * depth // 100 for depth in depths])
