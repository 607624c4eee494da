"""Names the forms draw from a seed: real people and cities for generated records and logs, and invented words,
which the documentation prose never contains, for the people, places and things mixed into prose and chats."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from functools import lru_cache

from ._prose import prose_text

# No first name ends another one and no surname starts another one, so no full name is part of another and a
# name in a question picks out one person.
FIRST_NAMES = (
    "Aisha", "Akira", "Alba", "Amara", "Anders", "Aurora", "Bao", "Bianca", "Carlos", "Chiara", "Dmitri", "Elif",
    "Emeka", "Esther", "Farid", "Freya", "Goran", "Hana", "Hugo", "Ines", "Ivan", "Jonas", "Kaito", "Kamala", "Lars",
    "Leila", "Lucia", "Malik", "Marta", "Mateo", "Nadia", "Niamh", "Olga", "Omar", "Pablo", "Priya", "Quinn",
    "Rafael", "Rosa", "Sanjay", "Selin", "Soren", "Tariq", "Thea", "Tomas", "Viktor", "Wanjiru", "Xavier", "Yara",
    "Yusuf", "Zofia", "Zeynep",
)  # fmt: skip
SURNAMES = (
    "Abiodun", "Bakker", "Castillo", "Delacroix", "Eriksen", "Fontaine", "Gallagher", "Haddad", "Iyer", "Jovanovic",
    "Kowalski", "Lindqvist", "Moreau", "Nakamura", "Novak", "Okafor", "Oyelaran", "Petrov", "Quispe", "Rahman",
    "Santos", "Takahashi", "Umarov", "Varga", "Wojcik", "Xu", "Yilmaz", "Zielinski", "Brennan", "Carvalho",
    "Dimitriou", "Ekwueme", "Ferreira", "Grimaldi", "Horvat", "Ishikawa", "Kaplan", "Lombardi", "Mensah", "Nguyen",
    "Olsen", "Pereira", "Rossi", "Sato", "Tanaka", "Urquhart", "Vasquez", "Weber", "Yamada", "Zhang",
)  # fmt: skip
CITIES = (
    "Accra", "Adelaide", "Ankara", "Athens", "Bergen", "Bogota", "Bordeaux", "Brno", "Cairo", "Calgary", "Cork",
    "Dakar", "Dublin", "Fukuoka", "Gdansk", "Geneva", "Hanoi", "Izmir", "Kyoto", "Lagos", "Leeds", "Lima", "Lisbon",
    "Lyon", "Manila", "Medellin", "Milan", "Mumbai", "Nairobi", "Oslo", "Perth", "Porto", "Quito", "Riga",
    "Seville", "Tallinn", "Tunis", "Utrecht", "Valencia", "Vilnius", "Zagreb",
)  # fmt: skip

ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
CODAS = ("", "", "", "l", "m", "n", "r", "s")
CITY_ENDINGS = ("", "ford", "holm", "by", "ton", "vik", "stad", "bury", "mouth")


def person_names(rng: random.Random, count: int) -> list[str]:
    """`count` distinct full names "First Last", in a random order."""
    pairs = rng.sample(range(len(FIRST_NAMES) * len(SURNAMES)), count)
    return [f"{FIRST_NAMES[i % len(FIRST_NAMES)]} {SURNAMES[i // len(FIRST_NAMES)]}" for i in pairs]


@lru_cache(maxsize=1)
def prose_vocabulary() -> frozenset[str]:
    """The words of the prose, lower-cased: what an invented word must not be, lest it occur in the filler."""
    return frozenset(re.findall(r"[a-z]+", prose_text().lower()))


def invented_word(rng: random.Random) -> str:
    """A capitalised made-up word of two syllables, or sometimes three ("Kelu", "Draimoth", "Tavonrel")."""
    while True:
        syllables = (rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.choice((2, 2, 3))))
        word = "".join(syllables).capitalize()
        if word.lower() not in prose_vocabulary():
            return word


def invented_city(rng: random.Random) -> str:
    return invented_word(rng) + rng.choice(CITY_ENDINGS)


def distinct_names(rng: random.Random, draws: Sequence[Callable[[random.Random], str]]) -> list[str]:
    """One name from each of `draws`, none inside another (ignoring case), so that each occurs only where it is
    placed and naming one never string-matches another; a name inside another is drawn again."""
    names = [""] * len(draws)
    pending = list(range(len(draws)))
    while pending:
        for i in pending:
            names[i] = draws[i](rng)
        joined = "\n".join(names).lower()
        pending = [i for i, name in enumerate(names) if joined.count(name.lower()) > 1]
    return names
