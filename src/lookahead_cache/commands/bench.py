"""`lookahead-cache bench`: prefill overhead, decode speed and memory of LookaheadCache against a full cache."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import budget_value, positive_int

RUNNER = "lookahead_cache.evaluation.benchmark"
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lengths", type=positive_int, nargs="+", default=[2048, 4096, 8192], help="Prompt lengths in tokens."
    )
    parser.add_argument(
        "--budget", type=budget_value, default=256, help="LookaheadCache budget (tokens, or a fraction in (0, 1])."
    )
    parser.add_argument(
        "--scorers",
        nargs="+",
        default=["snapkv", "streaming"],
        help="LookaheadCache configurations to compare: a scorer name, or scorer+allocation (e.g. snapkv+adakv, "
        "lookahead+lukv; the allocation defaults to uniform).",
    )
    parser.add_argument(
        "--attn-implementation",
        default="sdpa",
        choices=["sdpa", "eager", "lookahead_varlen"],
        help="Attention implementation of the model (lookahead_varlen decodes packed per-head layers in place).",
    )
    parser.add_argument("--decode-tokens", type=positive_int, default=32, help="Timed decode steps after the prefill.")
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="Measured rounds per configuration, after one warm-up."
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="Seed of the prompt text (or token ids) and random weights."
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="Use a random-weight model with the default model's config instead of its GGUF weights (quick runs; "
        "the prompt is then random token ids).",
    )
    parser.add_argument(
        "--adapter",
        help="Lookahead adapter (local folder or Hub repo id) for the lookahead scorer; if not given: the one shipped "
        "for the default model, or an untrained one with --random-weights (timings only).",
    )
    parser.add_argument("--device", help="Torch device; if not given: cuda when available, else cpu.")
    parser.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default="auto",
        help="Model dtype; auto is bfloat16 on CUDA, float32 otherwise.",
    )
    parser.add_argument("--out", type=Path, help="Write the results as JSON to this file.")
