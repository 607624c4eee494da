"""`lookahead-cache train`: train lookahead modules for a model on the offline training mix."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..cli import positive_int
from ..default_model import DEFAULT_MODEL_HUB_ID
from ..evaluation.suite import DEFAULT_MODEL, load_model
from ..evaluation.tasks import get_task
from .config import TrainingConfig
from .trainer import ADAPTER_DIR, PLOT_NAME, train

HELP = "Train the lookahead embeddings and LoRA of a model on the offline training mix (resumable)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainingConfig()
    parser.add_argument("--model", default=DEFAULT_MODEL, help="'default' (SmolLM2-135M-Instruct) or a local model folder.")
    parser.add_argument("--out", type=Path, required=True, help="Run folder: cached responses, checkpoints, the adapter.")
    parser.add_argument("--tasks", nargs="+", default=defaults.tasks, help="Task families of the training mix.")
    parser.add_argument("--lengths", type=positive_int, nargs="+", default=defaults.lengths, help="Prompt lengths.")
    parser.add_argument("--samples-per-task", type=positive_int, default=defaults.samples_per_task)
    parser.add_argument("--response-tokens", type=positive_int, default=defaults.response_tokens)
    parser.add_argument("--epochs", type=positive_int, default=defaults.epochs)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="Peak learning rate.")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    parser.add_argument("--grad-accum", type=positive_int, default=defaults.gradient_accumulation, help="Prompts per step.")
    parser.add_argument("--save-every", type=positive_int, default=defaults.save_every, help="Checkpoint interval (steps).")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="Seed of the training prompts.")
    parser.add_argument("--num-tokens", type=positive_int, default=defaults.num_tokens, help="Lookahead tokens.")
    parser.add_argument("--lora-rank", type=positive_int, default=defaults.lora_rank)
    parser.add_argument("--lora-alpha", type=positive_int, default=defaults.lora_alpha)
    parser.add_argument(
        "--validation-samples-per-task",
        type=int,
        default=defaults.validation_samples_per_task,
        help="Validation prompts per family and length, drawn with --validation-seed; their KL is logged at every "
        "checkpoint (0: none).",
    )
    parser.add_argument("--validation-seed", type=int, default=defaults.validation_seed)
    parser.add_argument(
        "--no-store-prompt-kv",
        dest="store_prompt_kv",
        action="store_false",
        help="Do not store each prompt's keys and values on disk; every step then reruns the prompt (slower).",
    )


def check_arguments(args: argparse.Namespace) -> None:
    for name in args.tasks:
        get_task(name)
    args.config = TrainingConfig(
        tasks=list(args.tasks),
        lengths=list(args.lengths),
        samples_per_task=args.samples_per_task,
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
        validation_samples_per_task=args.validation_samples_per_task,
        validation_seed=args.validation_seed,
        store_prompt_kv=args.store_prompt_kv,
    )


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_model(args.model)
    command = "lookahead-cache " + " ".join(shlex.quote(arg) for arg in sys.argv[1:])
    name = DEFAULT_MODEL_HUB_ID if args.model == DEFAULT_MODEL else args.model
    train(model, tokenizer, args.config, args.out, command=command, base_model_name_or_path=name)
    print(f"Adapter: {args.out / ADAPTER_DIR}\nLoss curve: {args.out / PLOT_NAME}")
    return 0
