from __future__ import annotations

import ast
import itertools
from collections import Counter
from collections.abc import Iterator
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from ._haystack import DEPTHS, insert_at_depths
from ._stdlib import Function, functions, module_names
from .base import Draft, Slot, TaskFamily

INTRO = "Below is reference documentation of functions from the Python standard library.\n\n"
QUESTION = "What is the default value of the `{parameter}` parameter of `{function}`? Answer with the value only."


def passage_lines(function: Function) -> list[str]:
    """A documentation entry: the signature as written in the source, then the docstring's first paragraph."""
    return [
        f"{function.module}.{function.qualname}({function.arguments})",
        *map(str.rstrip, function.summary.splitlines()),
    ]


def is_distinctive(default: str) -> bool:
    """Whether a default is a literal worth asking for: not one a guess gets right (None, booleans, 0, 1, -1, empty)."""
    try:
        value = ast.literal_eval(default)
    except ValueError:
        return False
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return value not in (0, 1, -1)
    # A letter or digit at least: the metric's normalisation would leave nothing of '&'.
    return isinstance(value, str) and len(value) <= 30 and value.isprintable() and any(c.isalnum() for c in value)


@lru_cache(maxsize=1)
def documented_functions() -> tuple[Function, ...]:
    """Documented functions of the single-file modules whose qualified name is unique (platform variants defined
    twice are left out, so a question names one entry)."""
    pool = [function for name in module_names() for function in functions(name)]
    counts = Counter((function.module, function.qualname) for function in pool)
    return tuple(function for function in pool if counts[function.module, function.qualname] == 1)


@lru_cache(maxsize=1)
def questions() -> tuple[tuple[Function, str, str], ...]:
    """`(function, parameter, default)` for every distinctive default of :func:`documented_functions`."""
    return tuple(
        (function, parameter, default)
        for function in documented_functions()
        for parameter, default in function.defaults
        if is_distinctive(default)
    )


class DocQA(TaskFamily):
    """Question answering over documentation: entries (signature and docstring summary) of standard library
    functions, one of which is asked about: the default value of one of its parameters, as written in its
    signature. The answer is in the context verbatim and unambiguous (the function is named in full), and defaults
    a guess would get right (None, True, 0, ...) are never asked.

    The other entries, drawn at random from all modules, are distractors, often with the same parameter names; the
    asked entry sits at one of RULER's depths. The context grows line by line, the last distractor possibly cut.
    """

    name = "doc_qa"
    metric = "token_f1"
    max_new_tokens = 32
    description = "Default value of a parameter of one stdlib function, among documentation entries of many others."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        for target, parameter, default in slot.in_turn(questions()):
            yield self._draft(slot, target, parameter, default)

    def _draft(self, slot: Slot, target: Function, parameter: str, default: str) -> Draft:
        rng = slot.rng
        others = [function for function in documented_functions() if function is not target]
        # A documentation entry has at least two lines, of six tokens or more each.
        distractors = rng.sample(others, min(len(others), slot.context_length // 12))
        lines = [(i, line) for i, function in enumerate(distractors) for line in passage_lines(function)]
        entry = "\n".join(passage_lines(target))
        depth = rng.choice(DEPTHS)
        question = QUESTION.format(parameter=parameter, function=f"{target.module}.{target.qualname}")

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            groups = itertools.groupby(lines[:size], key=lambda numbered: numbered[0])
            passages = ["\n".join(line for _, line in group) for _, group in groups]
            return INTRO + "\n\n".join(insert_at_depths(passages, [entry], [depth])), question, (default,)

        return Draft(render, max_size=len(lines))
