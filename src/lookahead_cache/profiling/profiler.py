"""LU-KV's offline profiling of a model and one or more scorers, on the calibration prompts or the user's own.

Per calibration prompt: one recorded prefill; an answer sampled from the full cache; the oracle long-horizon
utility of every prompt token for every (layer, KV head); each scorer's scores; then per scorer the loss curves,
their hulls and the global greedy (`solver`), giving a `[99, layers, kv_heads]` table of prune ratios. The
profile is the mean of those tables over the prompts. Each prompt's answer and tables are saved as they are
made, so an interrupted run resumes. Under `torchrun` or `accelerate launch` the processes share the prompts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import get_layer_types_and_kwargs
from transformers.utils import logging

from ..adapters.config import BaseModelSignature
from ..adapters.model import get_lookahead
from ..evaluation.replay import (
    PrefillRecording,
    continue_recording,
    future_queries,
    lookahead_queries,
    record_prefill,
    required_lookahead,
)
from ..prefill import LayerPrefill
from ..run_folder import (
    check_same_run,
    load_safetensors,
    model_fingerprint,
    read_json,
    safetensors_metadata,
    save_safetensors,
    write_text,
)
from ..scorers import Scorer, get_scorer, scorer_name, scorer_settings
from ..selection import protected_positions
from ..training.user_data import file_digest, model_context_length, read_user_data
from .calibration import calibration_prompts
from .profile import HeadProfile
from .solver import cumulative_losses, hull_marginal_costs, prune_ratios

logger = logging.get_logger(__name__)

# No head may evict more than this share of the prompt (nor its sink and window).
MIN_KEPT_SHARE = 0.01


@torch.no_grad()
def oracle_utility(model: PreTrainedModel, prefills: list[LayerPrefill], answer_ids: torch.Tensor) -> torch.Tensor:
    """`[layers, kv_heads, prompt_len]` LU-KV's long-horizon utility of each prompt token for each head.

    For every answer token and query head: its attention to the token (softmax over the prompt's keys) times the
    norm of what the token's value adds to the output, `||W_O^(h) v_j||`, normalised over the layer's heads and
    tokens; the utility is the largest such product over the answer's tokens and the GQA group's query heads.
    """
    utilities = []
    for prefill, queries in zip(prefills, future_queries(model, prefills, answer_ids)):
        output = getattr(prefill.module, "o_proj", None)
        if output is None:
            raise ValueError(
                "LU-KV profiling needs the attention output projection `o_proj`; "
                f"{type(prefill.module).__name__} has none."
            )
        keys, values = prefill.keys[0].float(), prefill.values[0].float()
        kv_heads, length, head_dim = keys.shape
        q_heads = queries.shape[1]
        groups = q_heads // kv_heads
        attention = torch.softmax(
            queries[0].float() @ keys.repeat_interleave(groups, 0).transpose(-1, -2) * prefill.scaling, dim=-1
        )
        weight = output.weight.float().view(output.weight.shape[0], q_heads, head_dim)
        contribution = torch.einsum("qtd,hqd->qth", values.repeat_interleave(groups, 0), weight).norm(dim=-1)
        contribution = contribution / contribution.sum()
        utility = (attention * contribution[:, None]).amax(dim=1)
        utilities.append(utility.view(kv_heads, groups, length).amax(dim=1))
    return torch.stack(utilities)


@torch.no_grad()
def scorer_scores(model: PreTrainedModel, prefills: list[LayerPrefill], scorer: Scorer) -> torch.Tensor:
    """`[layers, kv_heads, prompt_len]` the scores `scorer` gives the recorded prompt (lookahead: the model's
    lookahead adapter runs after it)."""
    if scorer.needs_lookahead:
        queries = lookahead_queries(model, prefills)
        prefills = [replace(prefill, lookahead_queries=q) for prefill, q in zip(prefills, queries)]
    return torch.stack([scorer.score(prefill)[0].float() for prefill in prefills])


def prompt_prune_ratios(utility: torch.Tensor, scores: torch.Tensor, sink: int, window: int) -> torch.Tensor:
    """`[99, layers, kv_heads]` prune ratios of one calibration prompt (see `solver`)."""
    layers, kv_heads, length = utility.shape
    evictable = ~protected_positions(torch.ones(1, length, dtype=torch.bool), sink=sink, window=window)[0]
    curves = cumulative_losses(utility.flatten(0, 1), scores.flatten(0, 1), evictable)
    costs = [hull_marginal_costs(curve) for curve in curves]
    floor = max(math.ceil(MIN_KEPT_SHARE * length), min(sink + window, length))
    return prune_ratios(costs, length, max_evictions=length - floor).view(-1, layers, kv_heads)


def profile_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    scorers: list[str | Scorer],
    out_dir: str | Path,
    *,
    context_length: int = 4096,
    questions: int | None = None,
    answer_tokens: int = 64,
    temperature: float = 0.7,
    sink: int = 4,
    window: int = 32,
    seed: int = 0,
    data_files: list[str] | None = None,
) -> dict[str, HeadProfile]:
    """Profile `model` for each of `scorers`; each profile is saved into `out_dir` (with a heatmap) and returned,
    by scorer name.

    Work files (per-prompt tables) go to `out_dir/calibration/`; rerunning resumes from them.

    Under `torchrun` or `accelerate launch` (each process with its model on the device it should profile on: the
    model is not moved), process `rank` of `world` profiles the prompts `rank, rank + world, ...` into the shared
    `out_dir`; every process returns the profiles, which the main process alone saves. An answer's sampling seed
    is its prompt's, so the profiles do not depend on the number of processes.

    Args:
        scorers: Scorer names (default settings) or `Scorer` instances, at most one per scorer name: the profile
            records the settings, and `lukv` only pairs it with a scorer that has them.
        questions: Use only the first this many calibration questions (default: all, about thirty), or prompts of
            `data_files`.
        data_files: JSONL files of the user's prompts (see `lookahead_cache.training.user_data`), profiled instead
            of the calibration document (`context_length` then unused); their answers are sampled as the calibration
            answers are, so a line's "response" is not read.
    """
    rank, world = _processes()
    built = {scorer_name(scorer): scorer for scorer in map(get_scorer, scorers)}
    if len(built) != len(scorers):
        raise ValueError(f"Profile each scorer once per output folder (its files are named after it); got {scorers}.")
    # The tables of a prompt are reused on resume only for the same scorer settings.
    table_settings = {name: json.dumps(scorer_settings(scorer), sort_keys=True) for name, scorer in built.items()}
    out = Path(out_dir)
    work = out / "calibration"
    work.mkdir(parents=True, exist_ok=True)
    if data_files:
        prompts, digest, source = _data_prompts(data_files, tokenizer, model, questions, answer_tokens)
    else:
        prompts, digest = calibration_prompts(tokenizer, context_length, questions=questions, seed=seed)
        source = "lookahead_cache.profiling.calibration (pydoc_data prose, planted facts, varied questions)"
    settings = {
        "prompts": len(prompts),
        "context_length": max(prompt.shape[-1] for prompt in prompts) if data_files else context_length,
        "answer_tokens": answer_tokens,
        "temperature": temperature,
        "seed": seed,
        "sha256": digest,
        "source": source,
    }
    if any(scorer.needs_lookahead for scorer in built.values()):
        required_lookahead(model)
    adapter = get_lookahead(model)
    if adapter is not None:
        # Cached lookahead tables are only valid for the adapter that scored them.
        settings["lookahead_adapter_sha256"] = adapter.fingerprint()
    # What the tables depend on beyond the calibration data: the model, and the tokens that are never evicted.
    run_settings = {
        **settings,
        "model": getattr(model, "name_or_path", "") or type(model).__name__,
        "model_sha256": model_fingerprint(model),
        "sink": sink,
        "window": window,
    }
    settings_path = work / "settings.json"
    # Every process checks, so a refused resume stops them all; the write is atomic, so a read racing it is safe.
    if settings_path.exists():
        check_same_run(work, read_json(settings_path), run_settings, what="a profiling run")
    if rank == 0:
        write_text(settings_path, json.dumps(run_settings, indent=2) + "\n")
    # No table is written before the settings it was made with.
    _wait_for_everyone(world)
    layer_types, _ = get_layer_types_and_kwargs(model.config.get_text_config())
    layers = [i for i, kind in enumerate(layer_types) if kind == "full_attention"]

    for index in tqdm(range(rank, len(prompts), world), desc="profile", unit="prompt", disable=rank != 0):
        path = work / f"prompt_{index:02d}.safetensors"
        if path.exists() and safetensors_metadata(path).items() >= table_settings.items():
            continue
        input_ids = prompts[index].to(model.device)
        recording = record_prefill(model, input_ids)
        prefills = [recording.prefills[i] for i in layers]
        answer = _sample_answer(model, input_ids, recording, answer_tokens, temperature, seed * 1000 + index)
        utility = oracle_utility(model, prefills, answer)
        tables = {
            name: prompt_prune_ratios(utility, scorer_scores(model, prefills, scorer), sink, window)
            for name, scorer in built.items()
        }
        save_safetensors(
            {name: table.float().contiguous() for name, table in tables.items()}, path, metadata=table_settings
        )
    _wait_for_everyone(world)

    signature = BaseModelSignature.of(model.config, tokenizer)
    profiles = {}
    for name, scorer in built.items():
        tables = [load_safetensors(work / f"prompt_{i:02d}.safetensors")[name] for i in range(len(prompts))]
        profile = HeadProfile(
            prune_ratios=torch.stack(tables).mean(0),
            scorer=name,
            sink=sink,
            window=window,
            layers=layers,
            base_model=signature,
            calibration=settings,
            scorer_settings=scorer_settings(scorer),
        )
        if rank == 0:
            profile.save_pretrained(out)
            profile.plot(out / f"lukv_profile_{name}.png")
        profiles[name] = profile
    # Every process returns once the profiles are on disk.
    _wait_for_everyone(world)
    return profiles


def _processes() -> tuple[int, int]:
    """This process's rank and the number of processes profiling together: those `torchrun` or `accelerate launch`
    started, joined over gloo unless the caller set up a process group, else this one alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        # Gloo: the barriers need no device, wherever the model is. The one after the prompts waits out the slowest
        # process's share, which on a CPU (or resuming a run one process had nearly finished) can outlast the
        # default 30 minutes.
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _wait_for_everyone(world: int) -> None:
    if world > 1:
        dist.barrier()


def _data_prompts(
    data_files: list[str],
    tokenizer: PreTrainedTokenizerBase,
    model: PreTrainedModel,
    questions: int | None,
    answer_tokens: int,
) -> tuple[list[torch.Tensor], str, str]:
    """The `[1, n]` prompt ids of the data files (the first `questions` of them if given), a sha256 of them, and
    what the profile records as their source."""
    data = read_user_data(data_files, tokenizer, model_context_length(model.config), answer_tokens)
    summary = data.skipped_summary()
    if summary:
        logger.warning(summary)
    given = sum(prompt.response_ids is not None for prompt in data.prompts)
    if given:
        logger.info(f"{given} prompts of the data give a response: profiling samples its own answers instead.")
    if questions is not None and questions > len(data.prompts):
        raise ValueError(
            f"--questions {questions} asks for more prompts than the {len(data.prompts)} the data files give: pass "
            "at most that many, or leave --questions out to profile them all."
        )
    chosen = data.prompts[:questions]
    digest = hashlib.sha256()
    for prompt in chosen:
        digest.update(repr(prompt.input_ids).encode())
    files = ", ".join(f"{Path(path).name} (sha256 {file_digest(path)})" for path in data_files)
    return [torch.tensor([prompt.input_ids]) for prompt in chosen], digest.hexdigest(), f"data files: {files}"


def _sample_answer(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    recording: PrefillRecording,
    tokens: int,
    temperature: float,
    seed: int,
) -> torch.Tensor:
    """`[1, n]` answer sampled at `temperature` from the full cache of the recorded prompt."""
    generator = torch.Generator(device=input_ids.device).manual_seed(seed)
    probabilities = torch.softmax(recording.next_token_logits.float() / temperature, dim=-1)
    first = torch.multinomial(probabilities, 1, generator=generator)
    torch.manual_seed(seed)
    return continue_recording(
        model,
        input_ids,
        recording,
        first,
        tokens,
        min_new_tokens=tokens - 1,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
    )
