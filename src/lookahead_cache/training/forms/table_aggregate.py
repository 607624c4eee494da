"""Table aggregate: the total, largest or smallest amount of one customer's transactions in a long sales table."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._haystack import insert_at_depths
from ...evaluation.tasks.base import Draft, Slot, TaskFamily
from ._names import person_names
from ._tables import header_lines, row_line

ITEMS = (
    "Laptop stand", "USB-C hub", "Desk lamp", "Office chair", "Monitor arm", "Keyboard", "Wireless mouse", "Webcam",
    "Headset", "Notebook pack", "Fountain pen", "Printer paper", "Ink cartridge", "Desk organiser", "Whiteboard",
    "Standing mat", "Cable kit", "Power strip", "Docking station", "External drive", "Phone holder", "Footrest",
    "Bookshelf", "Filing cabinet", "Coffee machine", "Water bottle", "Backpack", "Label printer", "Shredder",
    "Paper tray",
)  # fmt: skip
CUSTOMERS = 40
# The asked customer's transactions; amounts below 1000 / their number, so that a total has no thousands separator
# to be written differently.
TARGET_TRANSACTIONS = (2, 5)
# Two digits at least: one would string-match inside almost any prediction.
MIN_AMOUNT, MAX_AMOUNT = 10, 400
# A transaction row takes 12 tokens or more.
ROWS_PER_TOKEN = 1 / 10
QUESTIONS = (
    ("What is the total amount of all transactions of {customer}?", sum),
    ("What is the largest single amount that {customer} paid?", max),
    ("What is the smallest single amount that {customer} paid?", min),
)
# Written out rather than by `strftime("%b")`, which follows the locale.
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class TableAggregate(TaskFamily):
    """A table of a shop's transactions over one year (date, customer, item, whole amount in euros), as a markdown
    table or CSV, one transaction per row, in date order; the question asks the total of one customer's amounts, or
    the largest or smallest of them.

    The asked customer has 2 to 5 transactions, with distinct amounts, and appears nowhere else; no customer's name
    is part of another's. Those transactions are spread over the table, one in each of as many equal stretches, at
    fractions of the rows kept, so all of them are in the context whatever its length; dates are given to rows by
    position, so they stay in order.

    A row can take 26 tokens, just over the 5 % of a 512-token prompt that the length fit may leave unfilled: should
    a draft's rows miss 95 % of it, another is drawn.
    """

    name = "table_aggregate"
    metric = "string_match"
    max_new_tokens = 8
    description = "Total, largest or smallest amount of one customer's 2 to 5 transactions in a long sales table."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        while True:
            yield self._draft(slot)

    def _draft(self, slot: Slot) -> Draft:
        rng = slot.rng
        customer, *others = person_names(rng, CUSTOMERS + 1)
        count = rng.randint(*TARGET_TRANSACTIONS)
        amounts = rng.sample(range(MIN_AMOUNT, 1000 // count), count)
        targets = [[customer, rng.choice(ITEMS), str(amount)] for amount in amounts]
        depths = [rng.randrange(100 * i // count, 100 * (i + 1) // count) for i in range(count)]
        num_rows = int(slot.context_length * ROWS_PER_TOKEN) + 1
        rows = [
            [rng.choice(others), rng.choice(ITEMS), str(rng.randint(MIN_AMOUNT, MAX_AMOUNT))] for _ in range(num_rows)
        ]
        year = rng.randint(2015, 2024)
        days = sorted(rng.choices(range(365), k=num_rows + count))
        dates = [datetime.date(year, 1, 1) + datetime.timedelta(days=day) for day in days]
        dates = [f"{MONTHS[date.month - 1]} {date.day:02d}" for date in dates]

        template, aggregate = rng.choice(QUESTIONS)
        answer = str(aggregate(amounts))
        question = template.format(customer=customer) + " Answer with the number only."
        markdown = rng.random() < 0.5
        head = header_lines(["Date", "Customer", "Item", "Amount (EUR)"], markdown)
        table = "markdown table" if markdown else "CSV file"
        intro = f"Below is a {table} of an office supplies shop's sales from January {year} on, one per row.\n\n"

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            kept = insert_at_depths(rows[:size], targets, depths)
            lines = [row_line([date, *cells], markdown) for date, cells in zip(dates[: len(kept)], kept, strict=True)]
            return intro + "\n".join([*head, *lines]), question, (answer,)

        return Draft(render, max_size=num_rows)
