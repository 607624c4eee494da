"""`lookahead-cache demo`: a needle question answered with a full cache and with LookaheadCache."""

from __future__ import annotations

import argparse

from ..cli import ALLOCATION_CHOICES, SCORER_CHOICES, budget_value, positive_int
from ..config import DEFAULT_ALLOCATION, DEFAULT_BUDGET, DEFAULT_SCORER

RUNNER = "lookahead_cache.demo"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--budget",
        type=budget_value,
        default=DEFAULT_BUDGET,
        help="LookaheadCache budget: prompt tokens kept per layer and KV head (int), or a fraction in (0, 1]; the "
        "default is LookaheadCache()'s.",
    )
    parser.add_argument(
        "--scorer",
        default=DEFAULT_SCORER,
        choices=SCORER_CHOICES,
        help="LookaheadCache scorer; auto is the lookahead scorer with the adapter shipped for the default model.",
    )
    parser.add_argument(
        "--allocation",
        default=DEFAULT_ALLOCATION,
        choices=ALLOCATION_CHOICES,
        help="LookaheadCache allocation; lukv reads the LU-KV profile shipped beside the adapter.",
    )
    parser.add_argument(
        "--context-tokens", type=positive_int, default=2000, help="Length of the chat prompt in tokens."
    )
    parser.add_argument("--max-new-tokens", type=positive_int, default=24, help="Most tokens of each answer.")
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=3,
        help="Timed rounds, each running both caches (alternating which goes first); the table gives medians.",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Picks the document's passages, the code and the needle's depth."
    )
