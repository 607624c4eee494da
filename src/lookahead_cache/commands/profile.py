"""`lookahead-cache profile`: LU-KV per-head budgets of a model and scorer."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import SCORER_CHOICES, positive_int
from ..config import DEFAULT_SINK, DEFAULT_WINDOW
from .eval import DEFAULT_MODEL, add_placement_arguments

RUNNER = "lookahead_cache.profiling.command"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"'{DEFAULT_MODEL}' (the embedded SmolLM2-135M-Instruct), a local model folder or a Hub model id.",
    )
    parser.add_argument("--revision", help="Branch, tag or commit of a Hub --model (default: its main branch).")
    add_placement_arguments(parser, "The dtype the model is loaded in.")
    parser.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="PATH",
        help="Your own prompts (JSONL files, folders of them or a datasets folder, as `train --data` reads), "
        "profiled instead of the calibration document; --questions takes the first N of them.",
    )
    parser.add_argument(
        "--adapter",
        help="Lookahead adapter (folder or Hub repo) for --scorers lookahead; default with "
        "the default model: the shipped one.",
    )
    parser.add_argument(
        "--scorers",
        nargs="+",
        default=["snapkv"],
        choices=SCORER_CHOICES[1:],
        help="Scorers to profile (one profile each).",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="Where the profiles go, e.g. the lookahead adapter's folder."
    )
    parser.add_argument(
        "--context-length", type=positive_int, default=4096, help="Calibration document length (tokens)."
    )
    parser.add_argument(
        "--questions", type=positive_int, help="Use the first N calibration questions (all 30 if not given)."
    )
    parser.add_argument("--answer-tokens", type=positive_int, default=64, help="Sampled answer tokens per question.")
    parser.add_argument("--temperature", type=float, default=0.7, help="Sampling temperature of the answers.")
    parser.add_argument("--sink", type=int, default=DEFAULT_SINK, help="First tokens never evicted.")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="Last tokens never evicted.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the calibration data and sampling.")
