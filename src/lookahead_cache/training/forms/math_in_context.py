"""Arithmetic over facts spread through prose: a word problem whose numbers must be found in a long document."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._haystack import DEPTHS, insert_at_depths
from ...evaluation.tasks.base import Draft, Slot, TaskFamily
from ._names import distinct_names, invented_city
from ._prose import prose_run


@dataclass(frozen=True)
class Site:
    """A kind of place whose stock the facts count.

    Attributes:
        kind: The place's noun, in the singular and in the plural.
        items: What it has, in the plural.
        counts: Ways to state a count, with `{place}`, `{count}` and `{item}`.
    """

    kind: tuple[str, str]
    items: tuple[str, ...]
    counts: tuple[str, ...]


SITES = (
    Site(
        kind=("warehouse", "warehouses"),
        items=("crates", "pallets", "barrels", "sacks", "drums"),
        counts=("The {place} warehouse stores {count} {item}.", "There are {count} {item} in the {place} warehouse.",
                "The {place} warehouse holds {count} {item}."),
    ),
    Site(
        kind=("farm", "farms"),
        items=("sheep", "goats", "cows", "pigs", "hens", "ducks"),
        counts=("The {place} farm keeps {count} {item}.", "There are {count} {item} on the {place} farm.",
                "The {place} farm raises {count} {item}."),
    ),
    Site(
        kind=("library", "libraries"),
        items=("novels", "atlases", "maps", "journals", "manuscripts"),
        counts=("The {place} library holds {count} {item}.", "The {place} library owns {count} {item}.",
                "There are {count} {item} in the {place} library."),
    ),
    Site(
        kind=("nursery", "nurseries"),
        items=("roses", "tulips", "ferns", "orchids", "lilies"),
        counts=("The {place} nursery grows {count} {item}.", "There are {count} {item} at the {place} nursery.",
                "The {place} nursery has {count} {item} for sale."),
    ),
)  # fmt: skip
PRICES = (
    "Each of the {item} at the {place} {kind} is worth {price} dollars.",
    "The {item} at the {place} {kind} sell for {price} dollars each.",
    "At the {place} {kind}, one of the {item} costs {price} dollars.",
)
INTRO = "Below is a text from the Python documentation with figures about some {kinds} mixed in.\n"
QUESTION_SUFFIX = " Answer with the number only."
# Items counted per place: the one asked about and two others.
ITEMS_PER_SAMPLE = 3
MIN_PLACES = 4
TOKENS_PER_EXTRA_PLACE = 2048
# Prices stated besides the ones a question needs.
DISTRACTOR_PRICES = 3


@dataclass(frozen=True)
class Problem:
    """The numbers a question needs and its answer; the facts stating them are built around it.

    Attributes:
        counts: The counts of the asked item at the first `len(counts)` places, in order.
        price: The price of the asked item at the first place, for the product question; else None.
        answer: The number asked.
        question: The question, with `{a}`, `{b}` and `{c}` for the first places, `{item}`, `{kind}` and `{kinds}`.
    """

    counts: tuple[int, ...]
    price: int | None
    answer: int
    question: str


# Every answer is from 100 to 999: three digits cannot be string-matched by a shorter number, and written without
# a thousands separator whatever the style.
def sum_of_two(rng: random.Random) -> Problem:
    counts = (rng.randint(100, 499), rng.randint(100, 499))
    return Problem(counts, None, sum(counts), "How many {item} are there at the {a} and {b} {kinds} together?")


def sum_of_three(rng: random.Random) -> Problem:
    counts = (rng.randint(40, 329), rng.randint(40, 329), rng.randint(40, 329))
    question = "How many {item} are there at the {a}, {b} and {c} {kinds} together?"
    return Problem(counts, None, sum(counts), question)


def difference(rng: random.Random) -> Problem:
    larger = rng.randint(300, 999)
    # Not half of the larger count, or the answer would equal a count stated.
    smaller = rng.choice([n for n in range(100, larger - 99) if 2 * n != larger])
    question = "How many more {item} are there at the {a} {kind} than at the {b} {kind}?"
    return Problem((larger, smaller), None, larger - smaller, question)


def product(rng: random.Random) -> Problem:
    count = rng.randint(12, 60)
    price = rng.randint(max(3, -(-100 // count)), 16)
    question = "What is the total value, in dollars, of the {item} at the {a} {kind}?"
    return Problem((count,), price, count * price, question)


PROBLEMS: tuple[Callable[[random.Random], Problem], ...] = (sum_of_two, sum_of_three, difference, product)


class MathInContext(TaskFamily):
    """Arithmetic in context: facts "The <place> warehouse stores 340 crates." (or farms, libraries, nurseries and
    what they hold, and prices) spread through prose; the question asks the sum of two or three counts, the
    difference of two, or the value of one count at its price, and the answer is that number.

    Every place name is invented and each (place, item) count and price is stated once, so the numbers a question
    needs are settled. The distractors are the same item at other places, other items at the same places, and
    other prices; none of them states the answer, and the answer, from 100 to 999, is no count stated either. Each
    fact sits at its own RULER depth; the prose grows a sentence at a time.
    """

    name = "math_in_context"
    metric = "string_match"
    max_new_tokens = 16
    description = "Sum, difference or product of counts stated in facts spread through prose."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        site = rng.choice(SITES)
        kind, kinds = site.kind
        problem = rng.choice(PROBLEMS)(rng)
        num_places = rng.randint(MIN_PLACES, MIN_PLACES + slot.context_length // TOKENS_PER_EXTRA_PLACE)
        places = distinct_names(rng, [invented_city] * num_places)
        items = rng.sample(site.items, ITEMS_PER_SAMPLE)
        asked_item = items[0]

        def other_number(low: int, high: int) -> int:
            return rng.choice([n for n in range(low, high + 1) if n != problem.answer])

        counts = {(place, asked_item): count for place, count in zip(places, problem.counts, strict=False)}
        for place in places:
            counts.setdefault((place, asked_item), other_number(20, 999))
            for item in items[1:]:
                if rng.random() < 0.5:
                    counts[place, item] = other_number(20, 999)
        pairs = [pair for pair in counts if pair != (places[0], asked_item)]
        prices = {pair: other_number(3, 16) for pair in rng.sample(pairs, DISTRACTOR_PRICES)}
        if problem.price is not None:
            prices[places[0], asked_item] = problem.price
        facts = [
            rng.choice(site.counts).format(place=place, count=count, item=item)
            for (place, item), count in counts.items()
        ]
        facts += [
            rng.choice(PRICES).format(place=place, kind=kind, price=price, item=item)
            for (place, item), price in prices.items()
        ]
        rng.shuffle(facts)
        depths = rng.sample(DEPTHS, len(facts))
        filler = [sentence for paragraph in prose_run(tokenizer, slot.context_length, rng) for sentence in paragraph]
        intro = INTRO.format(kinds=kinds)
        named = dict(zip("abc", places, strict=False))
        question = problem.question.format(item=asked_item, kind=kind, kinds=kinds, **named) + QUESTION_SUFFIX
        answers = (str(problem.answer),)

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            return intro + " ".join(insert_at_depths(filler[:size], facts, depths)), question, answers

        yield Draft(render, max_size=len(filler))
