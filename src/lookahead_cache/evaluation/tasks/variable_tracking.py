from __future__ import annotations

import itertools
import string
from collections.abc import Iterator
from typing import ClassVar

from transformers import PreTrainedTokenizerBase

from ._haystack import DEPTHS, NOISE, distinct, insert_at_depths, noise_capacity
from .base import Draft, Slot, TaskFamily

INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
QUESTION = "Question: Find all variables that are assigned the value {value} in the text above."


class VariableTracking(TaskFamily):
    """RULER's variable tracking (vt): a chain `VAR A = 12345`, `VAR B = VAR A`, ... hidden in order among noise
    lines; the question gives the number, and every variable of the chain is a reference (multi-hop tracing).

    Class attributes:
        num_hops: Assignments after the first, so the chain has `num_hops + 1` variables (RULER: 4).

    RULER's prompt also starts with a short solved example; it is left out, the question being self-contained.
    Hsieh et al., https://arxiv.org/abs/2404.06654
    """

    name = "variable_tracking"
    metric = "string_match"
    max_new_tokens = 32
    description = "Follow a chain of 'VAR X = Y' assignments hidden in noise; name every variable equal to a number."
    num_hops: ClassVar[int] = 4

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        names = distinct(lambda: "".join(rng.choices(string.ascii_uppercase, k=5)), self.num_hops + 1)
        value = str(rng.randint(10000, 99999))
        chain = [f"VAR {names[0]} = {value}", *(f"VAR {b} = VAR {a}" for a, b in itertools.pairwise(names))]
        # Sorted, so that every assignment comes after the one it copies.
        depths = sorted(rng.sample(DEPTHS, len(chain)))

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            text = "\n".join(insert_at_depths([NOISE] * size, chain, depths))
            return INTRO + text, QUESTION.format(value=value), tuple(names)

        yield Draft(render, max_size=noise_capacity(tokenizer, slot.context_length))
