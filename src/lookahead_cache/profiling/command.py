"""`lookahead-cache profile`: LU-KV's offline profiling of a model for one or more scorers."""

from __future__ import annotations

import argparse
import os

import torch
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
    if launched_processes() > 1 and args.device_map is not None:
        raise ValueError(
            f"--device-map {args.device_map} would place every process's model alike; under torchrun or accelerate "
            "launch each process profiles on its own device (cuda:LOCAL_RANK where CUDA is, else the CPU): leave "
            "--device-map out."
        )


def launched_processes() -> int:
    """How many processes torchrun or accelerate launch started (1 outside them)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_device_map(device_map):
    """Where this process's model goes: `device_map` as given in one process; under several processes the process's
    own GPU (`cuda:LOCAL_RANK`), or the CPU without CUDA."""
    if launched_processes() > 1 and torch.cuda.is_available():
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device_map


def run(args: argparse.Namespace) -> int:
    adapter = args.adapter or (DEFAULT_MODEL if "lookahead" in args.scorers else None)
    model, tokenizer = load_model(
        args.model, args.dtype, adapter, args.revision, device_map=process_device_map(args.device_map)
    )
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
