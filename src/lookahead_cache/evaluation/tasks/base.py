"""What every task family shares: the sample, its chat prompt split into context and question, and the length fit.

A family only says how to draw one sample whose context can be made longer or shorter (a :class:`Draft`); the
base class settles how much context makes the chat prompt fill the requested length, the same way for all.
"""

from __future__ import annotations

import itertools
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from transformers import PreTrainedTokenizerBase

from ..metrics import METRIC_NAMES

T = TypeVar("T")

# Between the context and the question in the user message.
SEPARATOR = "\n\n"
# A prompt must fill at least this fraction of the requested length.
MIN_FILL = 0.95
# Drafts tried per sample before giving up; only families whose source can end up too coarse yield more than one.
MAX_DRAFTS = 8
# A session (`Sample.session_ids`): the assistant's reply to the document, then an exchange about something else,
# picked by the sample's index.
SESSION_ACKNOWLEDGEMENT = "I have read it. What would you like to know?"
SESSION_FILLERS = (
    ("How many days does a leap year have?", "A leap year has 366 days."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius at sea level."),
)


def chat_prompt(tokenizer: PreTrainedTokenizerBase, context: str, question: str) -> tuple[str, int]:
    """The chat prompt, one user message `context + SEPARATOR + question` ready for the answer, and the character
    offset where the context ends in it."""
    content = f"{context}{SEPARATOR}{question}"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )
    start = text.find(content)
    if start < 0:
        raise ValueError(
            "The tokenizer's chat template changed the user message (stripped or escaped it), so the question "
            "cannot be located in the prompt; use a template that inserts the message content verbatim."
        )
    return text, start + len(context)


def split_tokens(tokenizer: PreTrainedTokenizerBase, text: str, offsets: Sequence[int]) -> list[torch.Tensor]:
    """`text` tokenised once and cut into `len(offsets) + 1` parts, `[1, n]` each, at the character `offsets`.

    Each cut is where the tokenisation of the text before the offset stops matching that of the whole text, so a
    token merged across an offset goes to the part after it and the parts' concatenation is exactly the tokenised
    text.
    """
    ids = tokenizer.encode(text, add_special_tokens=False)
    cuts = [0]
    for offset in offsets:
        head = tokenizer.encode(text[:offset], add_special_tokens=False)
        cuts.append(max(cuts[-1], next((i for i, (a, b) in enumerate(zip(head, ids)) if a != b), len(head))))
    cuts.append(len(ids))
    return [torch.tensor([ids[start:end]]) for start, end in zip(cuts, cuts[1:])]


def prompt_length(tokenizer: PreTrainedTokenizerBase, context: str, question: str) -> int:
    text, _ = chat_prompt(tokenizer, context, question)
    return len(tokenizer.encode(text, add_special_tokens=False))


@dataclass(frozen=True)
class Sample:
    """One evaluation prompt: a long context, the question asked after it, and the reference answers.

    Attributes:
        family: Name of the task family that built it.
        context_length: The prompt length (in tokens of the tokenizer it was built with) it was built for; the
            whole chat prompt, context and question, fills 95 to 100 % of it.
        index: Position in its build.
        context: The long document (haystack, source file, passages, ...), the instruction that introduces it
            included.
        question: What is asked after the context; never part of it.
        answers: The references the prediction is scored against.
        metric: Name of the metric module that scores it (see `lookahead_cache.evaluation.metrics`).
        max_new_tokens: Tokens to generate for an answer.
    """

    family: str
    context_length: int
    index: int
    context: str
    question: str
    answers: tuple[str, ...]
    metric: str
    max_new_tokens: int

    @property
    def id(self) -> str:
        return f"{self.family}/{self.context_length}/{self.index}"

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor]:
        """`(context_ids, question_ids)`, each `[1, n]`, whose concatenation is the tokenised chat prompt.

        The context part ends with the context text; the question part holds the blank line before the question,
        the question, the end of the user turn and the generation prompt. Prefilling both and then evicting
        evaluates a cache "question-aware"; prefilling and evicting the context alone, then feeding the question
        on the same cache, "question-agnostic" (as NVIDIA kvpress does).

        The split is at the end of the context rather than at the question: tokenisers commonly make one token of
        a blank line that ends a text, but two of one followed by a word. The whole text is tokenised once and
        split where the context's own tokenisation stops matching it, so that a token merged across the boundary
        anyway goes to the question and the concatenation is exactly the tokenised prompt.
        """
        text, split = chat_prompt(tokenizer, self.context, self.question)
        context_ids, question_ids = split_tokens(tokenizer, text, [split])
        return context_ids, question_ids

    def session_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[torch.Tensor]:
        """The sample as a chat session of three turns, `[1, n]` tokens each, whose concatenation is the tokenised
        chat: (1) the user gives the context and the assistant acknowledges it (`SESSION_ACKNOWLEDGEMENT`); (2) an
        unrelated exchange, a fixed question and reply from `SESSION_FILLERS` picked by the sample's index; (3) the
        user asks the question, and the generation prompt follows. Split where each turn's chat text ends, as
        `prompt_ids` splits its prompt.
        """
        question, reply = SESSION_FILLERS[self.index % len(SESSION_FILLERS)]
        messages = [
            {"role": "user", "content": self.context},
            {"role": "assistant", "content": SESSION_ACKNOWLEDGEMENT},
            {"role": "user", "content": question},
            {"role": "assistant", "content": reply},
            {"role": "user", "content": self.question},
        ]
        turns = [
            tokenizer.apply_chat_template(messages[:end], add_generation_prompt=end == len(messages), tokenize=False)
            for end in (2, 4, 5)
        ]
        if not all(later.startswith(earlier) for earlier, later in zip(turns, turns[1:])):
            raise ValueError(
                "The tokenizer's chat template renders the first turns of a conversation differently once later turns "
                "follow, so a session cannot be fed turn by turn; use a template that only appends each new turn."
            )
        return split_tokens(tokenizer, turns[-1], [len(turn) for turn in turns[:-1]])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict; :meth:`from_dict` turns it back into the same sample."""
        return {**asdict(self), "answers": list(self.answers)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sample:
        return cls(**{**data, "answers": tuple(data["answers"])})


@dataclass(frozen=True)
class Draft:
    """One sample before its length is settled.

    Attributes:
        render: `render(size) -> (context, question, answers)` with `size` units of context (sentences, list
            entries, lines, ...), for `1 <= size <= max_size`; the prompt grows with `size`. It is a pure function
            of `size`, every random choice being made before, because the fit renders several sizes.
        max_size: The most units the source offers.
    """

    render: Callable[[int], tuple[str, str, tuple[str, ...]]]
    max_size: int


@dataclass
class Slot:
    """Where a sample sits in a build, and the random generator all of its choices come from."""

    family: str
    context_length: int
    seed: int
    index: int
    rng: random.Random = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Seeded by the slot alone: a sample does not change with how many are built with it, nor with global state.
        self.rng = random.Random(f"{self.family}/{self.context_length}/{self.seed}/{self.index}")

    def in_turn(self, pool: Sequence[T]) -> Iterator[T]:
        """`pool` in one seeded order per build, starting at this sample's index: the samples of a build start
        from distinct items while the pool lasts, and a sample moves on to the next item if one does not fit."""
        order = random.Random(f"{self.family}/{self.context_length}/{self.seed}").sample(range(len(pool)), len(pool))
        for offset in range(len(pool)):
            yield pool[order[(self.index + offset) % len(pool)]]


class TaskFamily(ABC):
    """A kind of long-context task, building samples of a given prompt length offline.

    Subclasses set the class attributes and implement :meth:`_drafts`; adding a family is one file and one line in
    the registry (`lookahead_cache.evaluation.tasks.TASKS`).
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    max_new_tokens: ClassVar[int]
    description: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        metric = cls.__dict__.get("metric")
        if metric is not None and metric not in METRIC_NAMES:
            raise TypeError(f"{cls.__name__}.metric={metric!r} is not one of {', '.join(METRIC_NAMES)}.")

    def build(
        self, tokenizer: PreTrainedTokenizerBase, context_length: int, num_samples: int, seed: int = 0
    ) -> list[Sample]:
        """`num_samples` samples whose chat prompts fill 95 to 100 % of `context_length` tokens.

        The same `seed` gives the same samples (for a given Python version, whose documentation and sources are
        the text), and sample `i` is the same whatever `num_samples` is.

        Raises:
            ValueError: if `context_length` is too small for the family's instruction, question and least context,
                or larger than the text it has available.
        """
        if context_length < 1 or num_samples < 1:
            raise ValueError(
                f"context_length={context_length} and num_samples={num_samples} must both be positive integers."
            )
        return [self._sample(tokenizer, Slot(self.name, context_length, seed, index)) for index in range(num_samples)]

    def score(self, predictions: list[str], references: list[list[str]]) -> list[float]:
        """Per-sample scores of `predictions` against their `references` with the family's metric (`metrics.score`);
        a family whose answers the metric does not read as they are (several lines of code, say) overrides it."""
        from ..metrics import score

        return score(self.metric, predictions, references)

    @abstractmethod
    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        """Drafts of the sample in `slot`, to be tried in turn: the first that fits the length is kept."""

    def _sample(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Sample:
        longest, exhausted, shortest = 0, True, None
        for draft in itertools.islice(self._drafts(tokenizer, slot), MAX_DRAFTS):
            size, length = self._fit(tokenizer, draft, slot.context_length)
            if length > slot.context_length:
                # Even this draft's least context is too long (a long module docstring, say); another may fit.
                shortest = length if shortest is None else min(shortest, length)
                continue
            if length >= MIN_FILL * slot.context_length:
                context, question, answers = draft.render(size)
                return Sample(
                    family=self.name,
                    context_length=slot.context_length,
                    index=slot.index,
                    context=context,
                    question=question,
                    answers=answers,
                    metric=self.metric,
                    max_new_tokens=self.max_new_tokens,
                )
            longest = max(longest, length)
            exhausted = exhausted and size == draft.max_size
        if not longest:
            raise ValueError(
                f"context_length={slot.context_length} is too small for {self.name}: its shortest prompt (chat "
                f"template, instruction, question and the least context) takes {shortest} tokens. Use a longer "
                "context_length."
            )
        if exhausted:
            raise ValueError(
                f"context_length={slot.context_length} exceeds the text available to {self.name}: its longest "
                f"prompt has {longest} tokens. Use a shorter context_length."
            )
        raise ValueError(
            f"{self.name} could not fill context_length={slot.context_length} to within {1 - MIN_FILL:.0%}: the "
            f"units its context grows by are too long at this length (the closest prompt had {longest} tokens). "
            "Use a longer context_length."
        )

    def _fit(self, tokenizer: PreTrainedTokenizerBase, draft: Draft, context_length: int) -> tuple[int, int]:
        """The largest size whose prompt fits in `context_length` tokens, and that prompt's length (size 1 and its
        length when even that does not fit).

        Interpolation steps (prompt length is nearly linear in the size) alternate with bisection steps, which
        bound the number of tokenisations when it is not.
        """

        def length(size: int) -> int:
            context, question, _ = draft.render(size)
            return prompt_length(tokenizer, context, question)

        low, low_length = 1, length(1)
        if low_length > context_length:
            return low, low_length
        high, high_length = draft.max_size, length(draft.max_size)
        if high_length <= context_length:
            return high, high_length
        bisect = False
        while high - low > 1:
            if bisect:
                size = (low + high) // 2
            else:
                size = low + (context_length - low_length) * (high - low) // (high_length - low_length)
                size = min(max(size, low + 1), high - 1)
            bisect = not bisect
            size_length = length(size)
            if size_length <= context_length:
                low, low_length = size, size_length
            else:
                high, high_length = size, size_length
        return low, low_length
