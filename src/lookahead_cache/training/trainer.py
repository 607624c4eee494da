"""Training the lookahead modules: only the lookahead embeddings and LoRA learn, from the KL to the target attention.

The prompt's keys and values and the target do not depend on the lookahead modules: they come from a forward without
gradients at every step, or from disk with `store_prompt_kv`. Only the lookahead rows run with gradients, and their
attention over the prompt is compared with the attention the model's own response paid it. `accelerate launch`
spreads the prompts over processes and averages the gradients.

A frozen model too large for one device trains in one process, placed by `device_map` (`from_pretrained(...,
device_map="auto")`, `lookahead-cache train --device-map auto`): its layers on several devices, each step's inputs on
its embedding's device, the model left where it is. Layers that accelerate offloads (to disk, or to the CPU beside a
GPU) are refused: their weights exist for their forward only, and the backward of the lookahead queries runs through
them. FSDP is not supported.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, has_offloaded_params, set_seed
from peft import PeftModel
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from ..adapters import BaseModelSignature, LookaheadConfig, add_lookahead, get_lookahead, load_lookahead
from ..adapters.config import LOOKAHEAD_WEIGHTS_NAME
from ..evaluation.replay import PrefillRecording, lookahead_queries, record_prefill
from ..kernels.attention_scores import attention_scores_reference
from ..run_folder import (
    append_jsonl,
    check_same_run,
    load_safetensors,
    model_fingerprint,
    read_json,
    read_jsonl,
    write_jsonl,
    write_text,
)
from .config import TrainingConfig
from .data import (
    RESPONSES_NAME,
    TrainingExample,
    build_prompts,
    input_device,
    make_responses,
    prepare_examples,
    read_config_data,
    response_target,
)
from .user_data import UserData, file_digest

logger = logging.get_logger(__name__)

CONFIG_NAME = "training_config.json"
# Which model the run trains for: its name and its weights' fingerprint.
BASE_MODEL_NAME = "base_model.json"
# The digest of each data file the run trains on: a resumed run must read the same prompts.
DATA_FILES_NAME = "data_files.json"
CHECKPOINT_DIR = "checkpoint"
ADAPTER_DIR = "adapter"
# The checkpoint of lowest validation KL, as an adapter: the run's choice when it validates.
BEST_ADAPTER_DIR = "best_adapter"
VALIDATION_DIR = "validation"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
LOG_NAME = "loss.jsonl"
PLOT_NAME = "loss.png"
# Keeps log() finite where the predicted attention underflows to zero.
_EPS = 1e-10


def kl_loss(queries: list[torch.Tensor], prefills, target: torch.Tensor) -> torch.Tensor:
    """KL(target || predicted), averaged over layers and KV heads.

    Args:
        queries: Per layer, lookahead queries `[1, q_heads, n, head_dim]` (with gradients).
        prefills: The recorded `LayerPrefill` of each layer (prompt keys).
        target: `[layers, kv_heads, prompt_len]` attention of the response, rows summing to 1.
    """
    losses = []
    for layer_queries, prefill, layer_target in zip(queries, prefills, target):
        predicted = attention_scores_reference(layer_queries, prefill.keys, scaling=prefill.scaling)[0]
        layer_target = layer_target.to(predicted.device)
        kl = layer_target * (torch.log(layer_target + _EPS) - torch.log(predicted + _EPS))
        losses.append(kl.sum(-1).mean())
    # A model placed by device_map has its layers, and so their losses, on several devices.
    return torch.stack([loss.to(losses[0].device) for loss in losses]).mean()


def attention_modules(model: PreTrainedModel) -> dict[int, torch.nn.Module]:
    """The attention module of each layer of `model` by its cache layer index, found the way a LookaheadCache finds
    them: by a forward."""
    recording = record_prefill(model, torch.zeros(1, 1, dtype=torch.long, device=input_device(model)))
    return {prefill.layer_idx: prefill.module for prefill in recording.prefills}


def example_loss(
    model: PeftModel,
    example: TrainingExample,
    modules: dict[int, torch.nn.Module],
    recording: PrefillRecording | None = None,
) -> torch.Tensor:
    """The KL loss of one example; `modules` are the base model's attention modules (see `attention_modules`), and
    `recording` the prompt's prefill where the step has it already (its response was just made)."""
    if example.prompt_kv_path is not None:
        prefills = example.stored_prefills(modules)
        target = example.stored_target()
    else:
        base = model.get_base_model()
        device = input_device(base)
        recording = recording or record_prefill(base, torch.tensor([example.input_ids], device=device))
        prefills = recording.prefills
        target = response_target(base, recording, torch.tensor([example.response_ids], device=device))
    if target.shape[-1] != len(example.input_ids):
        raise ValueError(
            f"The target of {example.sample_id} covers {target.shape[-1]} tokens, its prompt {len(example.input_ids)}."
        )
    return kl_loss(lookahead_queries(model, prefills), prefills, target)


@torch.no_grad()
def validation_loss(model: PeftModel, examples: list[TrainingExample], modules: dict[int, torch.nn.Module]) -> float:
    """Mean KL loss over held-apart prompts of the training families."""
    return sum(float(example_loss(model, example, modules)) for example in examples) / len(examples)


def check_placement(model: PreTrainedModel, accelerator: Accelerator) -> bool:
    """Whether `model` is placed by a `device_map` (its `hf_device_map`), which training leaves where it is; a model
    without one goes to `accelerator.device`.

    Raises:
        ValueError: The model is under FSDP, or placed by a device map under several processes, or has layers that
            accelerate offloads; each message names the fix.
    """
    fsdp_types = []
    if torch.distributed.is_available():
        from torch.distributed import fsdp

        fsdp_types = [fsdp.FullyShardedDataParallel, *([fsdp.FSDPModule] if hasattr(fsdp, "FSDPModule") else [])]
    if accelerator.distributed_type == DistributedType.FSDP or isinstance(model, tuple(fsdp_types)):
        raise ValueError(
            "Lookahead training does not run under FSDP (the frozen model sharded over the processes): train in one "
            "process with the model placed over the devices by device_map, `lookahead-cache train --device-map auto "
            "...` (docs/bring-your-own-model.md#a-model-larger-than-one-device), or data parallel without FSDP where "
            "the model fits one device."
        )
    device_map = getattr(model, "hf_device_map", None)
    if device_map is None:
        return False
    places = sorted({str(place) for place in device_map.values()})
    if accelerator.num_processes > 1:
        raise ValueError(
            f"The model is placed by a device_map (over {', '.join(places)}) and {accelerator.num_processes} processes "
            "run: each process would load and place a whole model of its own. Train a placed model in one process "
            "(`lookahead-cache train --device-map auto ...`, without torchrun or accelerate launch), or leave "
            "--device-map out to train data parallel, each process with the whole model on its own device."
        )
    offloaded = [name for name, module in model.named_modules() if has_offloaded_params(module)]
    if offloaded:
        entries = [
            f"{key or 'the model'}: {place}"
            for key, place in device_map.items()
            if any(key == "" or name == key or name.startswith(key + ".") for name in offloaded)
        ]
        shown = "; ".join(entries[:4]) + ("; ..." if len(entries) > 4 else "")
        raise ValueError(
            f"The device_map offloads layers of the model ({shown}): accelerate loads an offloaded layer's weights "
            "for its forward only and puts them back on the meta device after it, and the backward of the lookahead "
            "queries runs through every layer (autograd then fails: 'expected device meta'). Give every layer a "
            "device it stays on: no 'disk' (nor 'cpu' beside a GPU) in the map, enough max_memory on the GPUs, "
            "more GPUs, or --dtype bfloat16 (half of float32)."
        )
    return True


def _schedule(config: TrainingConfig, total_steps: int):
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _example_order(num_examples: int, config: TrainingConfig) -> list[int]:
    """Every epoch's shuffled example indices, concatenated (seeded, so a resumed run sees the same order)."""
    order = []
    for epoch in range(config.epochs):
        indices = list(range(num_examples))
        random.Random(config.seed + epoch).shuffle(indices)
        order.extend(indices)
    return order


def train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainingConfig,
    out_dir: str | Path,
    *,
    command: str | None = None,
    base_model_name_or_path: str | None = None,
    responses: str | Path | None = None,
    responses_only: bool = False,
) -> PeftModel | None:
    """Train lookahead modules for `model` (frozen) and save the adapter to `out_dir/adapter`.

    Resumable: rerunning with the same `out_dir` reuses the cached responses and continues from the last checkpoint.
    Resuming with another config or another model (its weights' fingerprint) is refused, naming what differs.
    Under `accelerate launch`, prompts are split over the processes and gradients averaged.

    Args:
        base_model_name_or_path: How the model card names the base model (default: the model's `name_or_path`).
        responses: The responses file to read and extend (default: `responses.jsonl` in `out_dir`); one kept
            outside the run folder (committed, shared) lets a run resume on another machine without remaking them.
        responses_only: Make the responses of the training and validation prompts, and stop before training.

    Returns:
        The PeftModel carrying the trained adapter (None with `responses_only`).
    """
    accelerator = Accelerator()
    # Before anything is written: a placement training cannot take stops the run with its folder as it was.
    placed = check_placement(model, accelerator)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Read before anything is written: a mistake in the data stops the run with its folder as it was.
    user_data = read_config_data(model, tokenizer, config)
    config_path, base_model_path, data_files_path = out / CONFIG_NAME, out / BASE_MODEL_NAME, out / DATA_FILES_NAME
    base_model = {
        "model": base_model_name_or_path or model.name_or_path,
        "model_sha256": model_fingerprint(model),
    }
    data_files = {"data_files_sha256": {path: file_digest(path) for path in config.data_files}}
    if config_path.exists():
        recorded = asdict(TrainingConfig.from_json_file(config_path))
        if base_model_path.exists():
            recorded.update(read_json(base_model_path))
        if data_files_path.exists():
            recorded.update(read_json(data_files_path))
        check_same_run(out, recorded, {**asdict(config), **base_model, **(data_files if config.data_files else {})})
    # Every process has read the files before one rewrites them: a read racing the write saw an empty file.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        config.to_json_file(config_path)
        write_text(base_model_path, json.dumps(base_model, indent=2) + "\n")
        if config.data_files:
            write_text(data_files_path, json.dumps(data_files, indent=2) + "\n")
    if not placed:
        model = model.to(accelerator.device)
    model = model.eval()
    model.requires_grad_(False)
    device = input_device(model)

    responses = out / RESPONSES_NAME if responses is None else Path(responses)
    # One process that reruns every prompt anyway makes the missing responses in its steps, from the same prefill:
    # the first epoch then costs what making the responses alone would. Several processes share them out first,
    # each making the responses of its share of the missing prompts (see `prepare_examples`).
    in_steps = not (config.store_prompt_kv or responses_only or accelerator.num_processes > 1)
    processes = accelerator if accelerator.num_processes > 1 else None
    quiet = not accelerator.is_local_main_process
    prompts = build_prompts(tokenizer, config, user_data=user_data)
    # Validation first, and stored whatever the run stores: its few prompts are scored at every checkpoint (by the
    # main process).
    validation_prompts = build_prompts(tokenizer, config, validation=True, user_data=user_data)
    validation = []
    if validation_prompts:
        validation = prepare_examples(
            model,
            tokenizer,
            config,
            out / VALIDATION_DIR,
            validation_prompts,
            responses,
            quiet,
            store=True,
            processes=processes,
        )
    examples = prepare_examples(
        model, tokenizer, config, out, prompts, responses, quiet, make_missing=not in_steps, processes=processes
    )
    accelerator.wait_for_everyone()
    if responses_only:
        if accelerator.is_main_process:
            _log_skipped(user_data)
        return None
    modules = attention_modules(model)

    checkpoint = out / CHECKPOINT_DIR
    state = {"step": 0, "seconds": 0.0}
    if (checkpoint / STATE_NAME).is_file():
        peft_model = load_lookahead(model, checkpoint, tokenizer=tokenizer, is_trainable=True)
        state = read_json(checkpoint / STATE_NAME)
        logger.info(f"Resuming from step {state['step']} ({checkpoint}).")
    else:
        # The same seed in every process: each starts from the same embeddings and LoRA, and a rerun from scratch
        # repeats the run.
        set_seed(config.seed)
        lookahead_config = LookaheadConfig(
            num_tokens=config.num_tokens,
            lora_rank=config.lora_rank,
            lora_alpha=config.lora_alpha,
            base_model=BaseModelSignature.of(model.config, tokenizer),
            base_model_name_or_path=base_model_name_or_path,
        )
        peft_model = add_lookahead(model, lookahead_config)
    adapter = get_lookahead(peft_model)
    if adapter.embeddings.dtype != torch.float32:
        # Trained in float32, as PEFT keeps a LoRA on a half-precision model: Adam's small steps would round away in
        # bfloat16. A resumed run reads them from the checkpoint, which loading into this model rounded.
        embeddings = adapter.embeddings.detach().float()
        if state["step"]:
            embeddings = load_safetensors(checkpoint / LOOKAHEAD_WEIGHTS_NAME)["embeddings"].to(embeddings.device)
        adapter.embeddings = torch.nn.Parameter(embeddings)
    adapter.embeddings.requires_grad_(True)
    parameters = [p for p in peft_model.parameters() if p.requires_grad] + [adapter.embeddings]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    world = accelerator.num_processes
    order = _example_order(len(examples), config)
    per_step = config.gradient_accumulation * world
    total_steps = math.ceil(len(order) / per_step)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config, total_steps))
    if state["step"] and (checkpoint / OPTIMIZER_NAME).is_file():
        # Read to the CPU, not to accelerate's device: with several CPU processes that is `cpu:0`, a location torch.load
        # cannot restore to. load_state_dict moves the optimizer's state to its parameters' devices.
        saved = torch.load(checkpoint / OPTIMIZER_NAME, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])

    log_path = out / LOG_NAME
    if log_path.exists() and accelerator.is_main_process:
        # Steps logged after the last checkpoint are redone.
        write_jsonl(log_path, [record for record in read_jsonl(log_path) if record["step"] <= state["step"]])
    progress = tqdm(
        total=total_steps,
        initial=state["step"],
        desc="train",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    for step in range(state["step"], total_steps):
        started = time.perf_counter()
        batch = order[step * per_step : (step + 1) * per_step]
        mine = batch[accelerator.process_index :: world]
        step_loss = torch.zeros((), device=device)
        recordings = {}
        unanswered = [examples[index] for index in mine if not examples[index].response_ids]
        if unanswered:
            with append_jsonl(responses) as append:
                made = make_responses(peft_model.get_base_model(), unanswered, config.response_tokens, append)
            recordings = {example.sample_id: recording for example, recording in zip(unanswered, made)}
        for index in mine:
            loss = example_loss(peft_model, examples[index], modules, recordings.get(examples[index].sample_id))
            (loss / len(batch)).backward()
            step_loss += loss.detach().to(device) / len(batch)
        if world > 1:
            for parameter in parameters:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                parameter.grad = accelerator.reduce(parameter.grad, reduction="sum")
            step_loss = accelerator.reduce(step_loss, reduction="sum")
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state = {**state, "step": step + 1, "seconds": state["seconds"] + time.perf_counter() - started}
        record = {
            "step": step + 1,
            "loss": float(step_loss),
            "grad_norm": float(grad_norm),
            "lr": scheduler.get_last_lr()[0],
        }
        progress.set_postfix(loss=f"{record['loss']:.4f}")
        progress.update()
        checkpointing = (step + 1) % config.save_every == 0 or step + 1 == total_steps
        if accelerator.is_main_process:
            if checkpointing and validation:
                record["validation_loss"] = validation_loss(peft_model, validation, modules)
                progress.set_postfix(loss=f"{record['loss']:.4f}", validation=f"{record['validation_loss']:.4f}")
            with append_jsonl(log_path) as append:
                append(record)
            if record.get("validation_loss", math.inf) < state.get("best_validation_loss", math.inf):
                state.update(best_step=step + 1, best_validation_loss=record["validation_loss"])
                adapter.config.training = _recipe(config, examples, validation, read_jsonl(log_path), state, command)
                _save_atomically(adapter.save_pretrained, out / BEST_ADAPTER_DIR)
            if checkpointing:
                _save_checkpoint(adapter, optimizer, scheduler, state, checkpoint)
    progress.close()

    if accelerator.is_main_process:
        losses = read_jsonl(log_path)
        adapter.config.training = _recipe(config, examples, validation, losses, state, command)
        adapter.save_pretrained(out / ADAPTER_DIR)
        plot_loss(losses, out / PLOT_NAME)
        logger.info(f"Saved the adapter to {out / ADAPTER_DIR}; loss curve in {out / PLOT_NAME}.")
        if "best_step" in state:
            logger.info(
                f"The lowest validation KL ({state['best_validation_loss']:.4f}) was at step {state['best_step']}: "
                f"that checkpoint is the adapter in {out / BEST_ADAPTER_DIR}."
            )
        _log_skipped(user_data)
    accelerator.wait_for_everyone()
    return peft_model


def _log_skipped(user_data: UserData | None) -> None:
    # Repeated at the end, where it is seen: the warnings of each skipped line scrolled away long before.
    summary = user_data and user_data.skipped_summary()
    if summary:
        logger.warning(summary)


def _save_checkpoint(adapter, optimizer, scheduler, state: dict, checkpoint: Path) -> None:
    def save(folder: Path) -> None:
        adapter.save_pretrained(folder)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, folder / OPTIMIZER_NAME)
        (folder / STATE_NAME).write_text(json.dumps(state) + "\n")

    _save_atomically(save, checkpoint)


def _save_atomically(save, folder: Path) -> None:
    """`save(path)` into a fresh folder, then swapped in for `folder`, so an interruption never leaves half of one."""
    partial = folder.with_name(folder.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    save(partial)
    previous = folder.with_name(folder.name + ".previous")
    if folder.exists():
        folder.rename(previous)
    partial.rename(folder)
    if previous.exists():
        shutil.rmtree(previous)


def _recipe(
    config: TrainingConfig, examples: list[TrainingExample], validation: list[TrainingExample], losses, state, command
) -> dict:
    tail = losses[-max(1, len(losses) // 10) :]
    sources = []
    if config.tasks:
        sources.append(
            f"offline prompts of {len(config.tasks)} task forms ({', '.join(config.tasks)}), "
            f"{config.samples_per_task} per form at {config.lengths} tokens, seed {config.seed}"
        )
    if config.data_files:
        sources.append(
            f"the prompts of {', '.join(Path(path).name for path in config.data_files)} less a "
            f"{config.validation_fraction:.0%} validation share"
        )
    recipe = {
        "command": command or "lookahead_cache.training.train(...)",
        "data": (
            f"{len(examples)} prompts: {'; '.join(sources)}; targets from the responses the data gives, else the "
            f"model's own greedy responses, of up to {config.response_tokens} tokens"
        ),
        "tasks": list(config.tasks),
        "steps": f"{state['step']} optimizer steps of {config.gradient_accumulation} prompts, {config.epochs} epochs",
        "optimizer": (
            f"AdamW, lr {config.learning_rate} (warm-up {config.warmup_steps} steps, cosine to 10 %), "
            f"clip {config.max_grad_norm}"
        ),
        "train_time": f"{state['seconds'] / 60:.1f} min of optimizer steps (responses made before them not included)",
        "first_loss": f"{losses[0]['loss']:.4f}",
        "final_loss": f"{sum(r['loss'] for r in tail) / len(tail):.4f} (mean of the last {len(tail)} steps)",
    }
    validated = [r for r in losses if "validation_loss" in r]
    if validated:
        held_apart = [f"of the same forms, seed {config.validation_seed}"] if config.tasks else []
        held_apart += ["held out of the data files"] if config.data_files else []
        first, last = validated[0], validated[-1]
        recipe["validation_loss"] = (
            f"{last['validation_loss']:.4f} at step {last['step']} ({first['validation_loss']:.4f} at step "
            f"{first['step']}; lowest {state['best_validation_loss']:.4f} at step {state['best_step']}) on "
            f"{len(validation)} prompts {' and '.join(held_apart)}"
        )
    return recipe


def plot_loss(losses: list[dict], path: Path) -> None:
    """The KL loss per optimizer step and its running mean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in losses]
    values = [r["loss"] for r in losses]
    window = max(1, len(values) // 20)
    smooth = [
        sum(values[max(0, i - window + 1) : i + 1]) / len(values[max(0, i - window + 1) : i + 1])
        for i in range(len(values))
    ]
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.plot(steps, values, alpha=0.35, label="KL per step")
    axis.plot(steps, smooth, label=f"running mean ({window} steps)")
    validated = [r for r in losses if "validation_loss" in r]
    if validated:
        axis.plot([r["step"] for r in validated], [r["validation_loss"] for r in validated], "o-", label="validation")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("KL(target || lookahead)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
