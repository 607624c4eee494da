"""Record count: how many records of a long generated list have a given value in one field."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._haystack import insert_at_depths
from ...evaluation.tasks.base import Draft, Slot, TaskFamily
from ._names import CITIES
from ._tables import header_lines, row_line

# Records with the counted value: at least 2, fewer would make it a lookup; at most 9, and one per this many tokens
# of prompt, so that the value stays rare among the 20 or so records of a short prompt.
MIN_COUNT, MAX_COUNT = 2, 9
TOKENS_PER_COUNTED = 150
# A record takes 12 tokens or more.
RECORDS_PER_TOKEN = 1 / 10


@dataclass(frozen=True)
class Field:
    """A field of a record: its values, and the question counting the records with `{value}`."""

    name: str
    values: tuple[str, ...]
    question: str


@dataclass(frozen=True)
class Domain:
    """A kind of record, `plural` of `entity` numbered `#1234`, kept by `owner`."""

    entity: str
    plural: str
    owner: str
    fields: tuple[Field, ...]


DOMAINS = (
    Domain(
        entity="order",
        plural="orders",
        owner="an online shop",
        fields=(
            Field("city", CITIES, "How many orders go to {value}?"),
            Field(
                "status",
                ("placed", "packed", "shipped", "delivered", "returned", "cancelled", "on hold"),
                "How many orders have the status {value}?",
            ),
            Field(
                "carrier",
                ("DHL", "UPS", "FedEx", "GLS", "DPD", "Royal Mail", "PostNL", "Correos", "La Poste", "Canada Post"),
                "How many orders are shipped by {value}?",
            ),
            Field(
                "payment",
                ("credit card", "PayPal", "bank transfer", "voucher", "Apple Pay", "Klarna", "invoice"),
                "How many orders were paid by {value}?",
            ),
        ),
    ),
    Domain(
        entity="ticket",
        plural="support tickets",
        owner="an IT help desk",
        fields=(
            Field("office", CITIES, "How many tickets come from the {value} office?"),
            Field("priority", ("low", "normal", "high", "urgent"), "How many tickets have {value} priority?"),
            Field(
                "team",
                ("hardware", "network", "accounts", "security", "mobile", "printing", "mail", "databases", "licenses"),
                "How many tickets are assigned to the {value} team?",
            ),
            Field(
                "channel",
                ("phone", "chat", "web form", "walk-in", "letter", "fax"),
                "How many tickets came in by {value}?",
            ),
        ),
    ),
)


@cache
def countable(domain: Domain, field: Field) -> tuple[str, ...]:
    """The values of `field` that are part of no other value nor header of the domain, so that a line shows the
    counted value only when it has it."""
    texts = [text.lower() for other in domain.fields for text in other.values]
    texts += [domain.entity, *(other.name for other in domain.fields)]
    # Each value is one of the texts itself.
    return tuple(value for value in field.values if sum(value.lower() in text for text in texts) == 1)


class RecordCount(TaskFamily):
    """A long table of generated records (orders of a shop or tickets of a help desk, four fields each), as a
    markdown table or CSV, one record per row; the question asks how many records have one value in one field.

    The counted value is rare: 2 to 9 records have it (fewer in short prompts; their number is the answer) and no
    other record does, and it is part of no other value nor header, so no other row shows it. The counted records are
    spread over the list, one in each of as many equal stretches, at fractions of the records kept, so all of them are
    in the context whatever its length.
    """

    name = "record_count"
    metric = "string_match"
    max_new_tokens = 8
    description = "How many records of a long generated list have a given value in one field (2 to 9 of them)."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        domain = rng.choice(DOMAINS)
        asked = rng.randrange(len(domain.fields))
        field = domain.fields[asked]
        value = rng.choice(countable(domain, field))
        count = rng.randint(MIN_COUNT, max(MIN_COUNT, min(MAX_COUNT, slot.context_length // TOKENS_PER_COUNTED)))
        num_records = int(slot.context_length * RECORDS_PER_TOKEN) + 1
        numbers = [f"#{number}" for number in rng.sample(range(1000, 10000), num_records + count)]
        others = [other for other in field.values if other != value]

        def record(number: str, counted: bool) -> list[str]:
            cells = [rng.choice(other.values) for other in domain.fields]
            cells[asked] = value if counted else rng.choice(others)
            return [number, *cells]

        counted = [record(number, True) for number in numbers[:count]]
        rest = [record(number, False) for number in numbers[count:]]
        depths = [rng.randrange(100 * i // count, 100 * (i + 1) // count) for i in range(count)]
        markdown = rng.random() < 0.5
        head = header_lines([domain.entity, *(other.name for other in domain.fields)], markdown)
        lines = [row_line(cells, markdown) for cells in rest]
        counted_lines = [row_line(cells, markdown) for cells in counted]
        kind = "markdown table" if markdown else "CSV file"
        intro = f"Below is a {kind} of the {domain.plural} of {domain.owner}, one per row.\n\n"
        question = field.question.format(value=value) + " Answer with a number."

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            text = "\n".join([*head, *insert_at_depths(lines[:size], counted_lines, depths)])
            return intro + text, question, (str(count),)

        yield Draft(render, max_size=num_records)
