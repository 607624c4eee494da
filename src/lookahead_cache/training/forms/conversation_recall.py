"""Conversation recall: a personal detail the user mentioned once in a long chat with an assistant."""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._haystack import DEPTHS, insert_at_depths
from ...evaluation.tasks.base import Draft, Slot, TaskFamily
from ._names import distinct_names, invented_city, invented_word
from ._prose import prose_run


def booking_reference(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=3)) + str(rng.randint(1000, 9999))


def flight_number(rng: random.Random) -> str:
    return "".join(rng.choices(string.ascii_uppercase, k=2)) + str(rng.randint(100, 9999))


@dataclass(frozen=True)
class Detail:
    """A kind of personal detail a user may mention.

    Attributes:
        mentions: Ways the user says their own, with `{value}`.
        others: Ways the user says someone else's of the same kind, with `{value}`: a distractor.
        question: The question that asks for the user's own.
        value: Draws a value of it.
    """

    mentions: tuple[str, ...]
    others: tuple[str, ...]
    question: str
    value: Callable[[random.Random], str]


DETAILS = (
    Detail(
        mentions=("By the way, my dog is called {value}.", "My dog {value} is asleep next to me while I read this."),
        others=("My neighbour's dog is called {value}.", "My friend just got a puppy named {value}."),
        question="What did the user say their dog is called? Answer with the dog's name only.",
        value=invented_word,
    ),
    Detail(
        mentions=("My cat {value} keeps walking across my keyboard.", "I have a cat named {value}, by the way."),
        others=("My sister has a cat named {value}.",),
        question="What did the user say their cat is called? Answer with the cat's name only.",
        value=invented_word,
    ),
    Detail(
        mentions=("I just moved to {value}, so I am still unpacking.",
                  "Since I moved to {value} last month, I have more time to learn."),
        others=("My brother just moved to {value}.", "A friend of mine lives in {value}."),
        question="Which city did the user say they moved to? Answer with the city name only.",
        value=invented_city,
    ),
    Detail(
        mentions=("My hotel booking reference is {value}, in case I need it later.",
                  "Let me note my booking reference here so I don't lose it: {value}."),
        others=("My colleague's booking reference is {value}.",),
        question="What booking reference did the user give for their own booking? Answer with the reference only.",
        value=booking_reference,
    ),
    Detail(
        mentions=("I fly out tomorrow on flight {value}, so I need to finish early.",
                  "My flight number is {value}, I keep forgetting it."),
        others=("My friend arrives on flight {value}.",),
        question="What is the number of the user's own flight? Answer with the flight number only.",
        value=flight_number,
    ),
    Detail(
        mentions=("I live on {value} Street, near the park.", "My flat is on {value} Street."),
        others=("My parents live on {value} Street.",),
        question="On which street did the user say they live? Answer with the street name only.",
        value=invented_word,
    ),
    Detail(
        mentions=("My sister {value} is visiting me this weekend.", "My sister, {value}, is also learning Python."),
        others=("My friend's sister is called {value}.",),
        question="What did the user say their sister is called? Answer with the name only.",
        value=invented_word,
    ),
    Detail(
        mentions=("I work for a small company called {value}.", "At {value}, where I work, we are moving to Python."),
        others=("My cousin works for a company called {value}.",),
        question="What is the name of the company the user works for? Answer with the company name only.",
        value=invented_word,
    ),
)  # fmt: skip
# What the user says to start talking about a new paragraph of the documentation, and to hear more of one.
OPENINGS = (
    "Let's move on to another part of Python. What should I know next?",
    "Can you explain another topic from the Python reference?",
    "I'm reading the Python documentation. What comes next?",
    "Could you tell me about something else in Python?",
    "What is another thing worth knowing about the language?",
    "Let's switch topics. What else does the reference cover?",
    "Next question: can you explain a different part of Python?",
)
FOLLOW_UPS = (
    "Can you tell me more?",
    "Go on.",
    "Interesting. What else?",
    "Could you continue?",
    "And then?",
    "I see. Please go on.",
    "What more should I know about that?",
    "OK, that makes sense. Anything else?",
)
# What the user says after a personal detail, and what the assistant answers.
ASIDES = ("Anyway, back to Python.", "But let's keep going.", "Sorry, I digress.", "Just so you know.")
ACKNOWLEDGEMENTS = (
    "Thanks for sharing! What would you like to look at next?",
    "Good to know. Shall we continue with the documentation?",
    "Noted. Let me know when you want to go on.",
    "That sounds nice. I'm ready for your next question.",
)
INTRO = "Below is a transcript of a long conversation between a user and an assistant.\n"
# Personal details the user mentions besides the one asked.
MIN_OTHER_DETAILS, MAX_OTHER_DETAILS = 1, 3
MAX_SENTENCES_PER_REPLY = 3


class ConversationRecall(TaskFamily):
    """Conversation recall: a long chat in which the user asks about Python and the assistant answers with
    sentences of Python's documentation; the user mentions a personal detail once (their dog's name, the city they
    moved to, a booking reference, ...) and the question asks for it.

    The asked detail is mentioned once and its value, invented or random, occurs nowhere else, so it has one
    answer. The distractors are the user's other details, of other kinds, and, in half the samples, the same kind
    of detail about someone else ("My neighbour's dog is called ..."). Each mention is an exchange of its own (the
    user's turn and a short acknowledgement) placed between exchanges at a RULER depth short of the end; the
    transcript grows a line at a time (a user turn or a sentence of a reply), its last reply possibly cut.
    """

    name = "conversation_recall"
    metric = "string_match"
    max_new_tokens = 16
    description = "A personal detail the user mentioned once in a long chat with an assistant."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        details = rng.sample(DETAILS, 1 + rng.randint(MIN_OTHER_DETAILS, MAX_OTHER_DETAILS))
        asked = details[0]
        # The last value is for the same kind of detail as the one asked, about someone else.
        *values, other_value = distinct_names(rng, [detail.value for detail in details] + [asked.value])
        mentions = [
            rng.choice(detail.mentions).format(value=value) for detail, value in zip(details, values, strict=True)
        ]
        if asked.others and rng.random() < 0.5:
            mentions.append(rng.choice(asked.others).format(value=other_value))
        asides = [
            f"User: {mention} {rng.choice(ASIDES)}\nAssistant: {rng.choice(ACKNOWLEDGEMENTS)}" for mention in mentions
        ]
        rng.shuffle(asides)
        # Never after the last exchange, whose reply may be cut.
        depths = rng.sample(DEPTHS[:-1], len(asides))
        units = self._lines(rng, prose_run(tokenizer, slot.context_length, rng))
        question = "Earlier in the conversation, the user mentioned some personal details. " + asked.question

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            exchanges: dict[int, list[str]] = {}
            for exchange, line in units[:size]:
                exchanges.setdefault(exchange, []).append(line)
            texts = [
                f"User: {user}" + (f"\nAssistant: {' '.join(reply)}" if reply else "")
                for user, *reply in exchanges.values()
            ]
            return INTRO + "\n".join(insert_at_depths(texts, asides, depths)), question, (values[0],)

        yield Draft(render, max_size=len(units))

    @staticmethod
    def _lines(rng: random.Random, paragraphs: list[tuple[str, ...]]) -> list[tuple[int, str]]:
        """`(exchange, line)` for each line of the chat: in each exchange, the user's turn, then the sentences of
        the assistant's reply. Each paragraph is answered over one or more exchanges."""
        lines: list[tuple[int, str]] = []
        exchange = 0
        for paragraph in paragraphs:
            start = 0
            while start < len(paragraph):
                end = start + rng.randint(1, MAX_SENTENCES_PER_REPLY)
                lines.append((exchange, rng.choice(FOLLOW_UPS if start else OPENINGS)))
                lines += ((exchange, sentence) for sentence in paragraph[start:end])
                start, exchange = end, exchange + 1
        return lines
