"""Timeline order: in a long chronological log of dated events, the event just after or before another, or the
date of one."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._haystack import DEPTHS, insert_at_depths
from ...evaluation.tasks.base import Draft, Slot, TaskFamily
from ._names import distinct_names, invented_word


@dataclass(frozen=True)
class Event:
    """A kind of event, each one named by an invented word.

    Attributes:
        entry: How the log states it, with `{name}`; short, since a log line is a unit of context.
        phrase: How a question refers to it, with `{name}`.
    """

    entry: str
    phrase: str


EVENTS = (
    Event("The {name} bridge opened.", "the opening of the {name} bridge"),
    Event("The ship {name} was launched.", "the launch of the ship {name}"),
    Event("The {name} treaty was signed.", "the signing of the {name} treaty"),
    Event("The {name} festival began.", "the start of the {name} festival"),
    Event("The {name} museum opened.", "the opening of the {name} museum"),
    Event("The {name} mine closed.", "the closing of the {name} mine"),
    Event("Storm {name} hit the coast.", "the storm {name} hitting the coast"),
    Event("The {name} company was founded.", "the founding of the {name} company"),
    Event("The {name} tower was completed.", "the completion of the {name} tower"),
    Event("The {name} railway opened.", "the opening of the {name} railway"),
    Event("The {name} expedition set out.", "the departure of the {name} expedition"),
    Event("Comet {name} was sighted.", "the sighting of comet {name}"),
    Event("The {name} prize was first awarded.", "the first award of the {name} prize"),
)
INTRO = "Below is a chronological log of events from a town's archives, oldest first, one event per line.\n"
NAME_SUFFIX = " Answer with the name in that event only (the name of the bridge, ship, treaty, ...)."
DATE_SUFFIX = " Answer with the date only, as written in the log (YYYY-MM-DD)."
FIRST_YEARS = (1800, 1990)
MAX_DAYS_BETWEEN_EVENTS = 12
# Log lines per prompt token the log can need at most: a line takes 16 tokens or more.
LINES_PER_TOKEN = 1 / 16


class TimelineOrder(TaskFamily):
    """Timeline order: a log of dated events, one per line in chronological order, each named by an invented word
    ("1874-05-02: The Kelu bridge opened."); the question names an event and asks which event came immediately
    after or before it (answer: that event's name), or on which date it happened (answer: the date).

    Names are invented and distinct and the dates strictly increase down the log, so the neighbour and the date
    asked are unique. The two events a question is about are placed together at one RULER depth, so they are in
    the log and adjacent whatever its length; dates are given to the lines in order once they are placed. The log
    grows a line at a time.
    """

    name = "timeline_order"
    metric = "string_match"
    max_new_tokens = 24
    description = "Which event came just after or before a named one in a long dated log, or when it happened."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        num_lines = int(slot.context_length * LINES_PER_TOKEN) + 2
        names = distinct_names(rng, [invented_word] * num_lines)
        events = [rng.choice(EVENTS) for _ in names]
        entries = [event.entry.format(name=name) for event, name in zip(events, names, strict=True)]
        first = datetime.date(rng.randint(*FIRST_YEARS), 1, 1) + datetime.timedelta(days=rng.randrange(365))
        dates = [first]
        for _ in range(num_lines - 1):
            dates.append(dates[-1] + datetime.timedelta(days=rng.randint(1, MAX_DAYS_BETWEEN_EVENTS)))
        # The first two events are the pair asked about, in this order.
        earlier, later = (event.phrase.format(name=name) for event, name in zip(events[:2], names[:2], strict=True))
        depth = rng.choice(DEPTHS)
        kind = rng.choice(("after", "before", "date"))
        # Which of the two a date question asks about.
        dated = rng.randrange(2)
        if kind == "after":
            question = f"In the log, which event came immediately after {earlier}?" + NAME_SUFFIX
        elif kind == "before":
            question = f"In the log, which event came immediately before {later}?" + NAME_SUFFIX
        else:
            question = f"On which date did {(earlier, later)[dated]} happen?" + DATE_SUFFIX

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            log = insert_at_depths(entries[2 : 2 + size], entries[:2], [depth, depth])
            lines = [f"{date.isoformat()}: {entry}" for date, entry in zip(dates[: len(log)], log, strict=True)]
            if kind == "date":
                answer = dates[log.index(entries[dated])].isoformat()
            else:
                answer = names[1] if kind == "after" else names[0]
            return INTRO + "\n".join(lines), question, (answer,)

        yield Draft(render, max_size=num_lines - 2)
