"""Record lookup: one field of one record, found by its ID or by its name, in a long generated table."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._haystack import DEPTHS, insert_at_depths
from ...evaluation.tasks.base import Draft, Slot, TaskFamily
from ._names import CITIES, FIRST_NAMES, SURNAMES, person_names
from ._tables import header_lines, row_line

DEPARTMENTS = (
    "Accounting", "Compliance", "Customer Support", "Data Science", "Design", "Engineering", "Facilities", "Finance",
    "Legal", "Logistics", "Marketing", "Operations", "Procurement", "Quality Assurance", "Research", "Sales",
    "Security", "Training",
)  # fmt: skip
MAJORS = (
    "Anthropology", "Architecture", "Biology", "Chemistry", "Economics", "Geology", "History", "Linguistics",
    "Mathematics", "Music", "Philosophy", "Physics", "Psychology", "Sociology", "Statistics",
)  # fmt: skip

QUESTION_SUFFIX = " Answer with the value only, as written in the table."
# Rows per prompt token the tables can need at most: a row takes 13 tokens or more.
ROWS_PER_TOKEN = 1 / 10


def distinct_ids(rng: random.Random, prefix: str, count: int) -> list[str]:
    """`count` distinct IDs `<prefix>-<4 digits>`."""
    return [f"{prefix}-{number}" for number in rng.sample(range(1000, 10000), count)]


@dataclass(frozen=True)
class Column:
    """A column of a table besides the ID and the name.

    Attributes:
        header: Its header.
        draw: A random value of it.
        question: How to ask for it, `{subject}` standing for the record.
    """

    header: str
    draw: Callable[[random.Random], str]
    question: str


@dataclass(frozen=True)
class Schema:
    """A kind of record: `entity` with an ID `<id_prefix>-1234`, a name and the other `columns`, listed in a table
    of `owner`'s `plural`."""

    entity: str
    plural: str
    owner: str
    id_prefix: str
    columns: tuple[Column, ...]


# Numeric columns have two digits at least: one would string-match inside almost any prediction.
SCHEMAS = (
    Schema(
        entity="employee",
        plural="employees",
        owner="a company",
        id_prefix="E",
        columns=(
            Column("Department", lambda rng: rng.choice(DEPARTMENTS), "Which department does {subject} work in?"),
            Column("Office", lambda rng: rng.choice(CITIES), "In which city is the office of {subject}?"),
            Column("Age", lambda rng: str(rng.randint(21, 66)), "How old is {subject}?"),
        ),
    ),
    Schema(
        entity="customer",
        plural="customers",
        owner="an online shop",
        id_prefix="C",
        columns=(
            Column("City", lambda rng: rng.choice(CITIES), "In which city does {subject} live?"),
            Column(
                "Customer since",
                lambda rng: str(rng.randint(1998, 2024)),
                "Since which year has {subject} been a customer?",
            ),
            Column("Orders", lambda rng: str(rng.randint(10, 480)), "How many orders has {subject} placed?"),
        ),
    ),
    Schema(
        entity="student",
        plural="students",
        owner="a university",
        id_prefix="S",
        columns=(
            Column("Major", lambda rng: rng.choice(MAJORS), "What is the major of {subject}?"),
            Column("Hometown", lambda rng: rng.choice(CITIES), "What is the hometown of {subject}?"),
            Column("Credits", lambda rng: str(rng.randint(12, 240)), "How many credits has {subject} earned?"),
        ),
    ),
)


class RecordLookup(TaskFamily):
    """A table of generated records (employees, customers or students: ID, name and three more columns), as a
    markdown table or CSV, one record per row; the question asks one field of one record, named by its ID or by its
    full name. IDs and names are all distinct, so exactly one row answers; the other rows share its column values at
    random but not its ID or name. The asked row sits at one of RULER's depths among the rows kept.

    A row can take 32 tokens, more than the 5 % of a 512-token prompt that the length fit may leave unfilled: should
    a draft's rows miss 95 % of it (about one draft in 200 does), another is drawn.
    """

    name = "record_lookup"
    metric = "string_match"
    max_new_tokens = 16
    description = "One field of one record, named by its ID or its name, in a long generated table of records."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        while True:
            yield self._draft(slot)

    def _draft(self, slot: Slot) -> Draft:
        rng = slot.rng
        schema = rng.choice(SCHEMAS)
        markdown = rng.random() < 0.5
        # Beyond the names available, the table stays shorter and the base class says the length is too long.
        count = min(int(slot.context_length * ROWS_PER_TOKEN) + 1, len(FIRST_NAMES) * len(SURNAMES) - 1)
        ids = distinct_ids(rng, schema.id_prefix, count + 1)
        names = person_names(rng, count + 1)
        rows = [[ids[i], names[i], *(column.draw(rng) for column in schema.columns)] for i in range(count + 1)]
        target, distractors = rows[0], rows[1:]
        headers = ["ID", "Name", *(column.header for column in schema.columns)]
        head = header_lines(headers, markdown)
        target_line = row_line(target, markdown)
        distractor_lines = [row_line(row, markdown) for row in distractors]
        depth = rng.choice(DEPTHS)

        asked = rng.randrange(len(headers))
        # The ID is asked of a name and the name of an ID; any other field of either.
        by_name = asked == 0 or (asked > 1 and rng.random() < 0.5)
        subject = f"the {schema.entity} named {target[1]}" if by_name else f"the {schema.entity} with ID {target[0]}"
        questions = ["What is the ID of {subject}?", "What is the name of {subject}?"]
        questions += [column.question for column in schema.columns]
        question = questions[asked].format(subject=subject) + QUESTION_SUFFIX
        answer = target[asked]
        kind = "markdown table" if markdown else "CSV file"
        intro = f"Below is a {kind} of the {schema.plural} of {schema.owner}, one {schema.entity} per row.\n\n"

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            lines = [*head, *insert_at_depths(distractor_lines[:size], [target_line], [depth])]
            return intro + "\n".join(lines), question, (answer,)

        return Draft(render, max_size=count)
