"""`lookahead-cache train`: train lookahead modules for a model on the offline training mix (arguments in
`lookahead_cache.commands.train`)."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from ..cli import require_extra
from ..commands.eval import DEFAULT_MODEL
from ..default_model import DEFAULT_MODEL_HUB_ID
from ..model_loading import load_model
from .config import TrainingConfig
from .data import RESPONSES_NAME, read_config_data
from .disk_estimate import choose_store_prompt_kv, describe_path, estimate_disk
from .forms import get_task
from .trainer import ADAPTER_DIR, CONFIG_NAME, PLOT_NAME, train


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
        # "auto" is resolved in `run` from the disk estimate, before this config goes to training (and is recorded).
        store_prompt_kv=args.store_prompt_kv is True,
    )


def _one_or_per_length(counts: list[int]) -> int | list[int]:
    return counts[0] if len(counts) == 1 else counts


def run(args: argparse.Namespace) -> int:
    model, tokenizer = load_model(args.model, args.dtype, revision=args.revision, device_map=args.device_map)
    args.config = choose_storage(model, tokenizer, args.config, args.out, args.store_prompt_kv)
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


def choose_storage(model, tokenizer, config: TrainingConfig, out: Path, requested: bool | str) -> TrainingConfig:
    """`config` with the storage path taken: the disk estimate printed (by the main process) before anything heavy,
    a store that does not fit the free disk refused, and `--store-prompt-kv auto` resolved (see
    `lookahead_cache.training.disk_estimate`). Every process of a distributed run takes the main process's choice."""
    from accelerate import Accelerator
    from accelerate.utils import broadcast_object_list

    # The state `train` builds next: a bare PartialState would ignore ACCELERATE_USE_CPU and see one process under
    # a multi-CPU launch, and accelerate keeps the first state built.
    state = Accelerator()
    recorded = None
    if requested == "auto" and (Path(out) / CONFIG_NAME).is_file():
        recorded = TrainingConfig.from_json_file(Path(out) / CONFIG_NAME).store_prompt_kv
    estimate = estimate_disk(model, config, out, read_config_data(model, tokenizer, config))
    store, why = choose_store_prompt_kv(requested, estimate, config.epochs, recorded)
    if state.num_processes > 1:
        store = broadcast_object_list([store])[0]
    if state.is_main_process:
        print(f"{estimate.describe()}\n{describe_path(store, why)}", flush=True)
    return replace(config, store_prompt_kv=store)
