"""`lookahead-cache bench`: prefill cost, decode speed and memory of LookaheadCache against a full DynamicCache.

Every prompt length is measured for the full cache and each scorer in one process, the configurations
interleaved run by run after one warm-up each, so that they share the machine's state (threads, clocks,
allocator) and their ratios are fair. Prefill times are medians over runs; the decode time is the median
over every decode step of every run. A prefill's overhead over the full cache's is given three ways: the median
of the per-round ratios, the ratio of the fastest runs (the least disturbed by other load on the machine), and the
ratio of counted floating-point operations, which no load moves.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from typing import Any

import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache
from transformers.utils import logging

from ..adapters import add_lookahead, load_lookahead
from ..cache import LookaheadCache
from ..default_model import DEFAULT_ADAPTER_DIR, DEFAULT_MODEL_FILE, default_model_path, load_default_model
from ..run_folder import write_text
from .documents import haystack_ids
from .methods import FULL, cache_configuration
from .report.tables import format_results
from .timing import TimedGeneration, median_prefill_ratio, prefill_flops, timed_generation

logger = logging.get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WARM_UP_TOKENS = 4


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse bad settings before the model is loaded; the cache itself validates budget and scorer names."""
    if len(set(args.scorers)) != len(args.scorers):
        raise ValueError(f"--scorers lists a configuration twice: {' '.join(args.scorers)}.")
    for config in args.scorers:
        new_cache(config, args.budget)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device} was asked for, but torch sees no CUDA device.")
    if isinstance(args.budget, int) and args.budget >= min(args.lengths):
        logger.warning(
            f"--budget {args.budget} covers prompts of {min(args.lengths)} tokens: those are kept whole, "
            "nothing is evicted."
        )


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype] if args.dtype != "auto" else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.random_weights:
        model = random_weight_model(
            dtype=dtype, device=device, seed=args.seed, attn_implementation=args.attn_implementation
        )
        model_name = f"random weights, config of {DEFAULT_MODEL_FILE}"
        generator = torch.Generator().manual_seed(args.seed)
        prompts = {n: torch.randint(model.config.vocab_size, (1, n), generator=generator) for n in args.lengths}
    else:
        logger.info(f"Loading {DEFAULT_MODEL_FILE} ...")
        model, tokenizer = load_default_model(dtype=dtype, device=device)
        model.set_attn_implementation(args.attn_implementation)
        model_name = DEFAULT_MODEL_FILE
        prompts = {n: torch.tensor([haystack_ids(tokenizer, n, args.seed)]) for n in args.lengths}
    if any(cache_configuration(config).needs_adapter for config in args.scorers):
        # Every configuration then runs through the same PEFT-wrapped model, whose LoRA is idle outside the lookahead
        # rows, so the ratios compare caches, not wrappers.
        if args.adapter is not None:
            model = load_lookahead(model, args.adapter)
        elif args.random_weights:
            model = add_lookahead(model).eval()
        else:
            model = load_lookahead(model, DEFAULT_ADAPTER_DIR, tokenizer=tokenizer)
    longest = max(args.lengths)
    if longest > model.config.max_position_embeddings:
        logger.warning(
            f"Prompts of {longest} tokens exceed the model's {model.config.max_position_embeddings} positions: "
            "timings stay meaningful, generated text does not."
        )

    rows = run_benchmark(
        model,
        {n: ids.to(device) for n, ids in prompts.items()},
        budget=args.budget,
        scorers=args.scorers,
        decode_tokens=args.decode_tokens,
        repeats=args.repeats,
    )
    settings = {
        "model": model_name,
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
        ),
        "dtype": str(dtype).removeprefix("torch."),
        "attn_implementation": args.attn_implementation,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "budget": args.budget,
        "scorers": args.scorers,
        "lookahead_adapter": (args.adapter or ("untrained" if args.random_weights else "shipped default"))
        if any(cache_configuration(config).needs_adapter for config in args.scorers)
        else None,
        "decode_tokens": args.decode_tokens,
        "repeats": args.repeats,
        "seed": args.seed,
        "peak_memory": (
            "torch.cuda.max_memory_allocated during prefill, minus memory allocated before it (an untimed run)"
            if device.type == "cuda"
            else "approximate: peak RSS sampled every ~1 ms during prefill, minus RSS before it (an untimed run)"
        ),
    }
    print(
        f"{model_name} on {settings['device']} ({settings['device_name']}, {settings['dtype']}, "
        f"{settings['threads']} threads); budget {args.budget}; medians of {args.repeats} interleaved runs after a "
        "warm-up (overhead: median of each round's prefill time over the full cache's in the same round).\n"
    )
    print(format_results(rows))
    print(f"\nPeak memory: {settings['peak_memory']}.")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        # Renamed into place: an interrupted write keeps the previous results rather than leaving a torn file.
        write_text(args.out, json.dumps({"settings": settings, "results": rows}, indent=2) + "\n")
        print(f"Wrote {args.out}")
    return 0


def random_weight_model(
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    seed: int = 0,
    attn_implementation: str = "sdpa",
) -> PreTrainedModel:
    """A model with the default model's architecture and random weights: as fast as the real one, loads quicker."""
    path = default_model_path()
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=dtype)
    return model.to(device).eval()


def run_benchmark(
    model: PreTrainedModel,
    prompts: dict[int, torch.Tensor],
    budget: int | float,
    scorers: list[str],
    decode_tokens: int,
    repeats: int,
) -> list[dict[str, Any]]:
    """Measure the full cache and every scorer on every prompt; one result row per (prompt, cache).

    Args:
        model: The causal LM.
        prompts: `[1, length]` token ids by length, on the model's device.
        budget: LookaheadCache budget.
        scorers: LookaheadCache configurations, `scorer` or `scorer+allocation`.
        decode_tokens: Timed decode steps per run (the token from the prefill comes on top).
        repeats: Timed runs per configuration, after one warm-up run each; one more prefill measures memory, and
            another counts its floating-point operations.
    """
    configs = [FULL, *scorers]

    rows = []
    progress = tqdm(total=len(prompts) * len(configs) * (repeats + 3), desc="bench", unit="run")
    for length, input_ids in prompts.items():
        for config in configs:
            progress.set_postfix(length=length, cache=config, phase="warm-up")
            timed_generation(model, input_ids, new_cache(config, budget), WARM_UP_TOKENS)
            progress.update()
        runs: dict[str, list[TimedGeneration]] = {config: [] for config in configs}
        # Interleaved, so that slow drifts of the machine (clock, other load) hit every configuration alike.
        for _ in range(repeats):
            for config in configs:
                progress.set_postfix(length=length, cache=config, phase="measure")
                runs[config].append(timed_generation(model, input_ids, new_cache(config, budget), decode_tokens + 1))
                progress.update()
        # Memory in a run of its own: on CPU its sampling thread would compete with the timed work for the cores.
        memory: dict[str, TimedGeneration] = {}
        for config in configs:
            progress.set_postfix(length=length, cache=config, phase="memory")
            memory[config] = timed_generation(model, input_ids, new_cache(config, budget), 1, measure_memory=True)
            progress.update()
        flops = {}
        for config in configs:
            progress.set_postfix(length=length, cache=config, phase="FLOPs")
            flops[config] = prefill_flops(model, input_ids, new_cache(config, budget))
            progress.update()
        rows.extend(_summarize(length, runs, memory, flops))
    progress.close()
    return rows


def new_cache(config: str, budget: int | float) -> Cache:
    """The cache of a benchmark configuration: `full`, `scorer` or `scorer+allocation`."""
    if config == FULL:
        return DynamicCache()
    method = cache_configuration(config)
    return LookaheadCache(budget=budget, scorer=method.scorer, allocation=method.allocation)


def _summarize(
    length: int, runs: dict[str, list[TimedGeneration]], memory: dict[str, TimedGeneration], flops: dict[str, int]
) -> list[dict[str, Any]]:
    rows = []
    for config, results in runs.items():
        rows.append(
            {
                "length": length,
                "cache": config,
                "kept_tokens_per_head": results[0].kept_prompt_tokens,
                "prefill_s": statistics.median(r.prefill_seconds for r in results),
                "prefill_s_runs": [r.prefill_seconds for r in results],
                "prefill_flops": flops[config],
                "decode_ms_per_token": 1000 * statistics.median(s for r in results for s in r.decode_seconds),
                "kv_bytes_after_prefill": results[0].kv_bytes_after_prefill,
                "peak_kv_bytes": max(r.peak_kv_bytes for r in results),
                "peak_prefill_memory_bytes": memory[config].peak_prefill_memory_bytes,
            }
        )
    full = rows[0]
    for row in rows:
        # Paired by round: runs are interleaved, so each round's full-cache run saw the machine as this one did.
        paired = [mine / theirs - 1 for mine, theirs in zip(row["prefill_s_runs"], full["prefill_s_runs"])]
        row["prefill_overhead_runs"] = paired
        row["prefill_overhead"] = median_prefill_ratio(runs[row["cache"]], runs[full["cache"]]) - 1
        row["prefill_overhead_fastest"] = min(row["prefill_s_runs"]) / min(full["prefill_s_runs"]) - 1
        row["prefill_flops_overhead"] = row["prefill_flops"] / full["prefill_flops"] - 1
        row["decode_speedup"] = full["decode_ms_per_token"] / row["decode_ms_per_token"]
        row["kv_ratio"] = row["kv_bytes_after_prefill"] / full["kv_bytes_after_prefill"]
        row["peak_kv_ratio"] = row["peak_kv_bytes"] / full["peak_kv_bytes"]
        full_memory, memory = full["peak_prefill_memory_bytes"], row["peak_prefill_memory_bytes"]
        row["peak_memory_ratio"] = memory / full_memory if memory is not None and full_memory else None
    return rows
