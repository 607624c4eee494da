"""`lookahead-cache train`: train lookahead modules for a model on the offline training mix (arguments in
`lookahead_cache.commands.train`)."""

from __future__ import annotations

import argparse
import shlex
import sys

from ..cli import require_extra
from ..commands.eval import DEFAULT_MODEL
from ..default_model import DEFAULT_MODEL_HUB_ID
from ..model_loading import load_model
from .config import TrainingConfig
from .data import RESPONSES_NAME
from .forms import get_task
from .trainer import ADAPTER_DIR, PLOT_NAME, train


def check_arguments(args: argparse.Namespace) -> None:
    require_extra("train", "matplotlib")
    defaults = TrainingConfig()
    if args.tasks is None:
        # The user's data alone is what `--data` asks to train on; the built-in forms join it when named.
        args.tasks = [] if args.data else defaults.tasks
    for name in args.tasks:
        get_task(name)
    if args.samples_per_task is None and not args.tasks:
        args.samples_per_task = [0]
    elif args.samples_per_task is None:
        if args.lengths != defaults.lengths:
            raise ValueError(
                f"--lengths {' '.join(map(str, args.lengths))} are not the default lengths, whose counts the default "
                "--samples-per-task gives: pass it (one count, or one per length)."
            )
        args.samples_per_task = defaults.samples_per_task
    args.config = TrainingConfig(
        tasks=list(args.tasks),
        data_files=[str(path) for path in args.data],
        validation_fraction=args.validation_fraction,
        lengths=list(args.lengths),
        samples_per_task=_one_or_per_length(args.samples_per_task),
        seed=args.seed,
        response_tokens=args.response_tokens,
        epochs=args.epochs,
        learning_rate=args.lr,
        warmup_steps=args.warmup_steps,
        gradient_accumulation=args.grad_accum,
        save_every=args.save_every,
        num_tokens=args.num_tokens,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        validation_samples_per_task=(
            None if args.validation_samples_per_task is None else _one_or_per_length(args.validation_samples_per_task)
        ),
        validation_seed=args.validation_seed,
        store_prompt_kv=args.store_prompt_kv,
    )


def _one_or_per_length(counts: list[int]) -> int | list[int]:
    return counts[0] if len(counts) == 1 else counts


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_model(args.model, args.dtype, revision=args.revision)
    command = "lookahead-cache " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    name = DEFAULT_MODEL_HUB_ID if args.model == DEFAULT_MODEL else args.model
    train(
        model,
        tokenizer,
        args.config,
        args.out,
        command=command,
        base_model_name_or_path=name,
        responses=args.responses,
        responses_only=args.responses_only,
    )
    if args.responses_only:
        print(f"Responses: {args.responses or args.out / RESPONSES_NAME}")
    else:
        print(f"Adapter: {args.out / ADAPTER_DIR}\nLoss curve: {args.out / PLOT_NAME}")
    return 0
