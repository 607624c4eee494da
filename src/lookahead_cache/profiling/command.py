"""`lookahead-cache profile`: LU-KV's offline profiling of a model for one or more scorers."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import positive_int
from ..config import DEFAULT_SINK, DEFAULT_WINDOW
from ..evaluation.suite import DEFAULT_MODEL, load_model
from ..scorers import get_scorer
from .profiler import profile_model

HELP = "Profile per-head budgets for allocation='lukv' (LU-KV) on offline calibration data (resumable)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help="'default' (SmolLM2-135M-Instruct) or a local model folder."
    )
    parser.add_argument(
        "--adapter",
        help="Lookahead adapter (folder or Hub repo) for --scorers lookahead; default with "
        "the default model: the shipped one.",
    )
    parser.add_argument("--scorers", nargs="+", default=["snapkv"], help="Scorers to profile (one profile each).")
    parser.add_argument(
        "--out", type=Path, required=True, help="Where the profiles go, e.g. the lookahead adapter's folder."
    )
    parser.add_argument(
        "--context-length", type=positive_int, default=4096, help="Calibration document length (tokens)."
    )
    parser.add_argument(
        "--questions", type=positive_int, help="Use the first N calibration questions (default: all 30)."
    )
    parser.add_argument("--answer-tokens", type=positive_int, default=64, help="Sampled answer tokens per question.")
    parser.add_argument("--temperature", type=float, default=0.7, help="Sampling temperature of the answers.")
    parser.add_argument("--sink", type=int, default=DEFAULT_SINK, help="First tokens never evicted.")
    parser.add_argument("--window", type=int, default=DEFAULT_WINDOW, help="Last tokens never evicted.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the calibration data and sampling.")


def check_arguments(args: argparse.Namespace) -> None:
    for name in args.scorers:
        get_scorer(name)
    if args.temperature <= 0:
        raise ValueError(f"--temperature {args.temperature} must be positive.")
    if args.sink < 0 or args.window < 0:
        raise ValueError("--sink and --window must be non-negative.")
    if "lookahead" in args.scorers and args.adapter is None and args.model != DEFAULT_MODEL:
        raise ValueError("--scorers lookahead with a --model of your own needs --adapter (its lookahead adapter).")


def run(args: argparse.Namespace) -> int:
    adapter = args.adapter or (DEFAULT_MODEL if "lookahead" in args.scorers else None)
    model, tokenizer = load_model(args.model, adapter)
    profiles = profile_model(
        model,
        tokenizer,
        args.scorers,
        args.out,
        context_length=args.context_length,
        questions=args.questions,
        answer_tokens=args.answer_tokens,
        temperature=args.temperature,
        sink=args.sink,
        window=args.window,
        seed=args.seed,
    )
    for name in profiles:
        print(f"{name}: {args.out}/lukv_profile_{name}.json, .safetensors, .png")
    return 0
