"""`lookahead-cache profile`: LU-KV's offline profiling of a model for one or more scorers."""

from __future__ import annotations

import argparse

import torch.distributed as dist

from ..cli import require_extra
from ..commands.eval import DEFAULT_MODEL
from ..model_loading import load_model
from ..scorers import get_scorer
from .profiler import profile_model


def check_arguments(args: argparse.Namespace) -> None:
    require_extra("eval", "matplotlib")
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
    model, tokenizer = load_model(args.model, args.dtype, adapter, args.revision, device_map=args.device_map)
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
        data_files=[str(path) for path in args.data],
    )
    # Under torchrun every process returns the profiles; the main one says where it saved them.
    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        for name in profiles:
            print(f"{name}: {args.out}/lukv_profile_{name}.json, .safetensors, .png")
    return 0
