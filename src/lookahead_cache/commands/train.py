"""`lookahead-cache train`: lookahead modules for a model, trained on the offline training mix."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import positive_int
from ..evaluation.tasks import TASKS
from ..training.config import MAX_VALIDATION_LENGTH, TrainingConfig
from ..training.forms import FORMS
from .eval import DEFAULT_MODEL, add_placement_arguments

RUNNER = "lookahead_cache.training.command"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainingConfig()
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"'{DEFAULT_MODEL}' (the embedded SmolLM2-135M-Instruct), a local model folder or a Hub model id.",
    )
    parser.add_argument("--revision", help="Branch, tag or commit of a Hub --model (default: its main branch).")
    add_placement_arguments(
        parser,
        "The dtype the frozen model is loaded in.",
        " Training takes one process with it, and no offloaded layer ('disk', or 'cpu' beside a GPU).",
    )
    parser.add_argument(
        "--data",
        nargs="+",
        default=[],
        metavar="PATH",
        help='Your own prompts: JSONL files, one {"prompt": "..."} or {"messages": [...]} a line, optionally with '
        'a "response", folders of them, or a folder saved by datasets (FOLDER:SPLIT for a DatasetDict; see '
        "docs/training.md). Alone, they are the training data; with --tasks, they join the built-in forms.",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=defaults.validation_fraction,
        help="Share of the --data prompts held out for validation (the same ones at every run over the same lines).",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="Run folder: cached responses, checkpoints, the adapter."
    )
    parser.add_argument(
        "--responses",
        type=Path,
        help="Responses file to read and extend instead of the run folder's: one kept with the project (committed) "
        "lets a run resume on another machine without making its responses again.",
    )
    parser.add_argument(
        "--responses-only",
        action="store_true",
        help="Make the responses of the training and validation prompts, then stop (the long part, resumable).",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=[*TASKS, *FORMS],
        metavar="TASK",
        help="Task forms of the training mix: training forms and evaluation families (default: all of "
        f"{' '.join(defaults.tasks)}; none with --data).",
    )
    parser.add_argument("--lengths", type=positive_int, nargs="+", default=defaults.lengths, help="Prompt lengths.")
    parser.add_argument(
        "--samples-per-task",
        type=int,
        nargs="+",
        help="Prompts per form at each length (one count per length, or one for all; default "
        f"{' '.join(map(str, defaults.samples_per_task))} with the default lengths).",
    )
    parser.add_argument(
        "--response-tokens", type=positive_int, default=defaults.response_tokens, help="Tokens of each target answer."
    )
    parser.add_argument(
        "--epochs", type=positive_int, default=defaults.epochs, help="Passes over the training prompts."
    )
    parser.add_argument("--lr", type=float, default=defaults.learning_rate, help="Peak learning rate.")
    parser.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="Linear warm-up steps.")
    parser.add_argument(
        "--grad-accum", type=positive_int, default=defaults.gradient_accumulation, help="Prompts per step."
    )
    parser.add_argument(
        "--save-every", type=positive_int, default=defaults.save_every, help="Checkpoint interval (steps)."
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="Seed of the training prompts.")
    parser.add_argument("--num-tokens", type=positive_int, default=defaults.num_tokens, help="Lookahead tokens.")
    parser.add_argument(
        "--lora-rank", type=positive_int, default=defaults.lora_rank, help="Rank of the lookahead LoRA."
    )
    parser.add_argument(
        "--lora-alpha", type=positive_int, default=defaults.lora_alpha, help="Alpha of the lookahead LoRA."
    )
    parser.add_argument(
        "--validation-samples-per-task",
        type=int,
        nargs="+",
        help="Validation prompts per form at each length (one count per length, or one for all; default one at "
        f"each length up to {MAX_VALIDATION_LENGTH}), drawn with --validation-seed; their KL is logged at every "
        "checkpoint (0: none).",
    )
    parser.add_argument(
        "--validation-seed", type=int, default=defaults.validation_seed, help="Seed of the validation prompts."
    )
    parser.add_argument(
        "--store-prompt-kv",
        nargs="?",
        const=True,
        choices=["auto"],
        default=defaults.store_prompt_kv,
        metavar="auto",
        help="Store each prompt's keys and values and its target in the run folder, so that training steps skip the "
        "prompt's forward (about 5x faster steps; about 45 KiB per SmolLM2 prompt token on disk). The run prints "
        "the estimate and the free disk first, and refuses a store that does not fit. 'auto': store when it fits "
        "within half the free disk and --epochs reread the prompts (default: off).",
    )
    parser.add_argument(
        "--no-store-prompt-kv",
        dest="store_prompt_kv",
        action="store_false",
        help="Rerun each prompt's forward at every step instead (the default).",
    )
