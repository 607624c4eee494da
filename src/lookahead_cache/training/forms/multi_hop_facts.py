"""Two-hop reasoning: facts linking people to organisations and organisations to cities, spread through prose."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ...evaluation.tasks._haystack import DEPTHS, insert_at_depths
from ...evaluation.tasks.base import Draft, Slot, TaskFamily
from ._names import distinct_names, invented_city, invented_word
from ._prose import prose_run


def invented_person(rng: random.Random) -> str:
    return f"{invented_word(rng)} {invented_word(rng)}"


def sentence_case(text: str) -> str:
    return text[0].upper() + text[1:]


@dataclass(frozen=True)
class Chain:
    """A kind of two-hop fact: a person linked to an organisation, which is in a city.

    Attributes:
        organisations: Templates of an organisation's name, `{}` standing for an invented word.
        links: Ways to say the first hop, with `{person}` and `{organisation}`.
        places: Ways to say the second hop, with `{organisation}` and `{city}`.
        question: The question, with `{person}`.
    """

    organisations: tuple[str, ...]
    links: tuple[str, ...]
    places: tuple[str, ...]
    question: str

    def organisation(self, rng: random.Random) -> str:
        return rng.choice(self.organisations).format(invented_word(rng))


CHAINS = (
    Chain(
        organisations=("{} Industries", "{} Logistics", "{} Holdings", "{} Systems", "{} Textiles", "{} Foods"),
        links=("{person} works for {organisation}.", "{person} is employed by {organisation}.",
               "{person} has a job at {organisation}."),
        places=("{organisation} is headquartered in {city}.", "The headquarters of {organisation} are in {city}.",
                "{organisation} has its head office in {city}."),
        question="In which city is the company that {person} works for headquartered?",
    ),
    Chain(
        organisations=("{} College", "{} Institute of Technology", "{} Academy of Arts", "{} Polytechnic"),
        links=("{person} studied at {organisation}.", "{person} graduated from {organisation}.",
               "{person} earned a degree at {organisation}."),
        places=("{organisation} is located in {city}.", "{organisation} has its campus in {city}.",
                "The campus of {organisation} is in {city}."),
        question="In which city is the school where {person} studied?",
    ),
    Chain(
        organisations=("the {} Rovers", "the {} Falcons", "the {} Wanderers", "the {} Giants", "the {} Comets"),
        links=("{person} plays for {organisation}.", "{person} signed a contract with {organisation}.",
               "{person} is a player on {organisation}."),
        places=("{organisation} play their home games in {city}.", "The home ground of {organisation} is in {city}.",
                "{organisation} are based in {city}."),
        question="In which city does the team that {person} plays for play its home games?",
    ),
    Chain(
        organisations=("the {} Orchestra", "the {} Choir", "the {} String Quartet", "the {} Brass Band"),
        links=("{person} performs with {organisation}.", "{person} is a member of {organisation}.",
               "{person} joined {organisation} as a musician."),
        places=("{organisation} rehearses in {city}.", "{organisation} is based in {city}.",
                "The concert hall of {organisation} is in {city}."),
        question="In which city is the ensemble that {person} performs with based?",
    ),
)  # fmt: skip

INTRO = "Below is a text from the Python documentation with facts about some people and organisations mixed in.\n"
QUESTION_SUFFIX = " Answer with the city name only."
# Organisations per sample: a few at least, and one more per this many tokens of context.
MIN_ORGANISATIONS = 3
TOKENS_PER_EXTRA_ORGANISATION = 2048


class MultiHopFacts(TaskFamily):
    """Two-hop reasoning: facts "<person> works for <company>." and "<company> is headquartered in <city>." (or a
    school, team or ensemble and its city) spread through prose; the question names a person and asks the city of
    their organisation, which no single fact states.

    Every name is invented and distinct, every person is linked to one organisation and every organisation is in
    one city of its own, so the answer is exactly one city. The other people and organisations are distractors:
    other people linked to the same or other organisations, other organisations in other cities. Each fact sits at
    its own RULER depth, in either order; the prose grows a sentence at a time.
    """

    name = "multi_hop_facts"
    metric = "string_match"
    max_new_tokens = 16
    description = "City of the organisation a named person belongs to, from two facts spread through prose."

    def _drafts(self, tokenizer: PreTrainedTokenizerBase, slot: Slot) -> Iterator[Draft]:
        rng = slot.rng
        chain = rng.choice(CHAINS)
        num_organisations = rng.randint(
            MIN_ORGANISATIONS, MIN_ORGANISATIONS + slot.context_length // TOKENS_PER_EXTRA_ORGANISATION
        )
        num_people = num_organisations + rng.randint(1, 3)
        draws = [invented_person] * num_people + [chain.organisation] * num_organisations
        names = distinct_names(rng, draws + [invented_city] * num_organisations)
        people = names[:num_people]
        organisations = names[num_people : num_people + num_organisations]
        cities = names[num_people + num_organisations :]
        # The person asked is the first, at the first organisation; the others join any organisation.
        memberships = [0] + [rng.randrange(num_organisations) for _ in people[1:]]
        facts = [
            rng.choice(chain.links).format(person=person, organisation=organisations[membership])
            for person, membership in zip(people, memberships, strict=True)
        ]
        facts += [
            rng.choice(chain.places).format(organisation=organisation, city=city)
            for organisation, city in zip(organisations, cities, strict=True)
        ]
        facts = [sentence_case(fact) for fact in facts]
        depths = rng.sample(DEPTHS, len(facts))
        filler = [sentence for paragraph in prose_run(tokenizer, slot.context_length, rng) for sentence in paragraph]
        question = chain.question.format(person=people[0]) + QUESTION_SUFFIX

        def render(size: int) -> tuple[str, str, tuple[str, ...]]:
            return INTRO + " ".join(insert_at_depths(filler[:size], facts, depths)), question, (cities[0],)

        yield Draft(render, max_size=len(filler))
