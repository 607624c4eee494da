"""Sections of Python's reference documentation (`pydoc_data.topics`), and documents of them around one target
section, that the forms asking about a named section build their prompts from."""

from __future__ import annotations

import bisect
import itertools
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks.base import Draft, Slot, prompt_length

INTRO = 'Below are sections of Python\'s reference documentation, each under its title as a "## " heading.\n\n'
# reST-style heading underlines in `pydoc_data.topics`: *** for a topic's title, === and --- for its sections.
UNDERLINE = re.compile(r"\*+|=+|-+")
# The end of a sentence: its punctuation (and a closing quote or bracket), before the capital or quote starting
# the next.
SENTENCE_END = re.compile(r"[.!?][\"”)]?(?= [\"“(A-Z])")
ABBREVIATION = re.compile(r"\b(?:e\.g|i\.e|etc|vs|cf)$")
# A target section takes at most this many characters per token of prompt (about 40 % of it, as prose has about
# 4 characters per token), so that most of the document is other sections.
TARGET_CHARS_PER_TOKEN = 1.5


@dataclass(frozen=True)
class Section:
    """One titled section of a documentation topic.

    Attributes:
        title: Its heading's text.
        body: Its lines up to the next heading, blank lines at either end left out.
    """

    title: str
    body: tuple[str, ...]

    @property
    def lines(self) -> tuple[str, ...]:
        """The section as the document shows it: its heading, a blank line, its body and a blank line."""
        return (f"## {self.title}", "", *self.body, "")

    @property
    def chars(self) -> int:
        return sum(len(line) + 1 for line in self.lines)

    def blocks(self) -> list[list[str]]:
        """The body's blocks of lines between blank lines."""
        groups = itertools.groupby(self.body, key=lambda line: bool(line.strip()))
        return [list(lines) for nonblank, lines in groups if nonblank]

    def prose_sentences(self) -> list[list[str]]:
        """The sentences of each block, an empty list for blocks that are not running text (code, grammar, tables,
        footnotes, indented notes)."""
        return [sentences(" ".join(block)) if is_prose(block) else [] for block in self.blocks()]


def is_prose(block: list[str]) -> bool:
    """Whether a block is a paragraph of running text: not indented, and starting with a word or a quoted name."""
    return (block[0][:1].isalpha() or block[0][:1] == '"') and not any(line.startswith(" ") for line in block)


def sentences(paragraph: str) -> list[str]:
    """The sentences of a paragraph, its whitespace collapsed (the documentation puts two spaces after a period),
    not split after "e.g." and the like."""
    text = " ".join(paragraph.split())
    result, start = [], 0
    for match in SENTENCE_END.finditer(text):
        if not ABBREVIATION.search(text, start, match.start()):
            result.append(text[start : match.end()])
            start = match.end() + 1
    return [*result, text[start:]]


def topic_sections(text: str) -> list[Section]:
    lines = text.split("\n")
    headings = [
        i
        for i in range(len(lines) - 1)
        if lines[i][:1].strip() and UNDERLINE.fullmatch(lines[i + 1]) and len(lines[i + 1]) == len(lines[i])
    ]
    sections = []
    for heading, following in zip(headings, [*headings[1:], len(lines)], strict=True):
        body = "\n".join(lines[heading + 2 : following]).strip("\n")
        sections.append(Section(lines[heading], tuple(body.split("\n")) if body else ()))
    return sections


@lru_cache(maxsize=1)
def reference_topics() -> tuple[tuple[Section, ...], ...]:
    """The sections of each `pydoc_data` topic, in order, topics sorted by name; a title is kept only where it first
    appears (topics such as "compound" repeat the sections of "if", "while", ...), so that a title names one
    section in any document."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    result = []
    for name in sorted(topics):
        sections = [section for section in topic_sections(topics[name]) if section.title not in seen]
        seen.update(section.title for section in sections)
        if sections:
            result.append(tuple(sections))
    return tuple(result)


def fits_alongside(section: Section, context_length: int) -> bool:
    return section.chars <= TARGET_CHARS_PER_TOKEN * context_length


def document_around(target: Section, rng: random.Random) -> tuple[Callable[[int], str], int]:
    """`(document, max_size)`: `document(size)` is the target section among `size - 1` lines of other sections, at
    a seeded depth, topics in a seeded order and sections in their own.

    The sections before the target come from every other topic, those after it from the rest. The lines before it
    are a seeded share of the `size - 1`, rounded down to the end of a paragraph, and the lines after it the
    remainder, the last section possibly cut: growing the size adds one line, and at times moves a paragraph's
    worth of lines from after the target to before it. Whole sections before the target would put it first in
    most short documents, as sections are often longer than they are.
    """
    topics = [[section for section in sections if section is not target] for sections in reference_topics()]
    rng.shuffle(topics)
    before_lines: list[str] = []
    # Where the lines before the target may stop: at a section's start, or after a blank line in its body (not the
    # one after its heading, which would leave the heading alone).
    breaks: list[int] = []
    for section in itertools.chain.from_iterable(topics[::2]):
        lines = section.lines
        breaks += [len(before_lines) + i for i in range(len(lines)) if i == 0 or (i > 2 and lines[i - 1] == "")]
        before_lines += lines
    after_lines = [line for section in itertools.chain.from_iterable(topics[1::2]) for line in section.lines]
    before_share = rng.random()

    def document(size: int) -> str:
        kept = size - 1
        before = breaks[bisect.bisect_right(breaks, before_share * kept) - 1]
        return "\n".join([*before_lines[:before], *target.lines, *after_lines[: kept - before]]).rstrip()

    return document, 1 + min(len(before_lines), len(after_lines))


def section_draft(
    tokenizer: PreTrainedTokenizerBase, slot: Slot, target: Section, question: str, answer: str
) -> Draft | None:
    """The draft asking `question` about `target` among other sections, or None where the prompt with the target
    section alone is already too long (it is left out beforehand by its characters, which only estimate tokens)."""
    document, max_size = document_around(target, slot.rng)

    def render(size: int) -> tuple[str, str, tuple[str, ...]]:
        return INTRO + document(size), question, (answer,)

    return Draft(render, max_size) if prompt_length(tokenizer, *render(1)[:2]) <= slot.context_length else None
