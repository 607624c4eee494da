"""What a paged serving engine could free of our end-of-prefill eviction, simulated on real kept-token masks.

vLLM and TensorRT-LLM store the KV cache in blocks of `block_size` token slots, each slot holding every KV head of
its token (see docs/serving.md). Our cache evicts per layer and per KV head, so a block can be given back in place
only where every KV head dropped every token of it. This script records the prefill of a few suite prompts on the
embedded default model (with its lookahead adapter, beside which the LU-KV profiles lie), compresses each with every
method and budget as `lookahead-cache eval` does (`LookaheadCache.from_prefill`), reads back which prompt tokens
each layer and KV head kept, and counts, per block size, in token slots of one KV head (a key and a value):

* `packed`: what our per-head packed storage holds (the kept tokens, nothing else);
* `paged per-layer table`: blocks left in place where some head of the layer kept a token, each layer with a
  block table of its own;
* `paged one table`: the same with one block table shared by all layers (vLLM's single KV cache group), so a block
  is free only where every head of every layer dropped all its tokens;
* `compacted one length`: kept tokens moved to the front of each head's slots, one length per request for all layers
  and heads (TensorRT-LLM's compaction and compressed-token count): the longest head sets it;
* `compacted per-layer length`: the same with a length per layer.

Usage (11 minutes on 2 CPU cores shared with other jobs; a rerun into the same --out resumes at the first prompt
not done):
    python scripts/simulate_paged_blocks.py --out results/paged_blocks_smollm2.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lookahead_cache import LookaheadCache
from lookahead_cache.evaluation.methods import CacheMethod, get_method
from lookahead_cache.evaluation.suite import DEFAULT_MODEL, build_samples, start_run
from lookahead_cache.model_loading import load_model
from lookahead_cache.prefill import LayerPrefill
from lookahead_cache.storage import PackedLayer, StoredLayer

DEFAULT_TASKS = (
    "niah_multikey",
    "variable_tracking",
    "common_words",
    "doc_qa",
    "code_continuation",
    "summary",
)
DEFAULT_METHODS = ("snapkv", "adakv", "lukv", "lookahead", "lookahead-adakv", "lookahead-lukv")
# Columns of the summary: the token slots each layout holds, as a share of the full cache's.
LAYOUTS = {
    "packed_slots": "packed",
    "paged_per_layer_table_slots": "paged per-layer table",
    "paged_one_table_slots": "paged one table",
    "compacted_one_length_slots": "compacted one length",
    "compacted_per_layer_length_slots": "compacted per-layer length",
}


def paged_block_usage(kept: torch.Tensor, real: torch.Tensor, block_size: int) -> dict:
    """What paged layouts hold of one prompt row whose layers and KV heads kept the tokens `kept`.

    Args:
        kept: `[layers, kv_heads, prompt_len]`, True where the head of the layer kept the prompt token.
        real: `[prompt_len]`, False on the left padding of a batch row, which an engine never stores.
        block_size: Token slots per block; the last block of the prompt is allocated whole, however few tokens it
            holds.

    Returns:
        Counts in token slots of one KV head of one layer: the full cache's (`full_slots`), and those of the layouts
        in `LAYOUTS`; per layer, the prompt blocks that every head of the layer dropped (`freed_blocks_per_layer`),
        and the blocks that every head of every layer dropped (`freed_blocks_all_layers`).
    """
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be at least 1 token.")
    if bool(kept[..., ~real].any()):
        raise ValueError("The kept masks mark padding tokens as kept: pass the row's own valid mask as `real`.")
    kept = kept[..., real]
    layers, heads, tokens = kept.shape
    blocks = -(-tokens // block_size)
    in_blocks = F.pad(kept, (0, blocks * block_size - tokens)).view(layers, heads, blocks, block_size)
    used_by_layer = in_blocks.any(-1).any(1)
    used_by_any_layer = used_by_layer.any(0)
    counts = kept.sum(-1)
    block_slots = block_size * heads
    # Compaction moves each head's kept tokens to its first slots; the blocks then hold the longest head whole.
    compacted_blocks = -(-counts.amax(-1) // block_size)
    return {
        "prompt_tokens": tokens,
        "blocks_per_layer": blocks,
        "freed_blocks_per_layer": (blocks - used_by_layer.sum(-1)).tolist(),
        "freed_blocks_all_layers": blocks - int(used_by_any_layer.sum()),
        "full_slots": tokens * heads * layers,
        "packed_slots": int(counts.sum()),
        "paged_per_layer_table_slots": int(used_by_layer.sum()) * block_slots,
        "paged_one_table_slots": int(used_by_any_layer.sum()) * block_slots * layers,
        "compacted_one_length_slots": int(compacted_blocks.max()) * block_slots * layers,
        "compacted_per_layer_length_slots": int(compacted_blocks.sum()) * block_slots,
    }


def kept_token_masks(cache: LookaheadCache, prefills: list[LayerPrefill]) -> torch.Tensor:
    """`[layers, batch, kv_heads, prompt_len]`, True where `cache`, compressed from `prefills` right before, kept
    the prompt token, found by the bits of its key among the prompt's keys (eviction copies keys unchanged)."""
    masks = torch.stack([_kept_in_layer(layer, prefill) for layer, prefill in zip(cache.layers, prefills)])
    if not torch.equal(masks.sum(-1), cache.kept_tokens()):
        raise ValueError(
            "The kept masks disagree with cache.kept_tokens(): the cache holds tokens beyond its prompt. Read the "
            "masks right after the cache is compressed, before it decodes."
        )
    return masks


def _kept_in_layer(layer: StoredLayer, prefill: LayerPrefill) -> torch.Tensor:
    prompt_keys = prefill.keys
    stored = layer.padded()[0] if isinstance(layer, PackedLayer) else layer.keys
    slot_valid = layer.slot_valid()
    slot_valid = torch.ones(stored.shape[:3], dtype=torch.bool) if slot_valid is None else slot_valid
    slot_valid = slot_valid.expand(stored.shape[:3])
    prompt_prints, order = _fingerprints(prompt_keys).sort(-1)
    if bool((prompt_prints[..., 1:] == prompt_prints[..., :-1]).any()):
        raise ValueError(
            f"Layer {prefill.layer_idx}: two prompt keys of one KV head have the same fingerprint, so a kept key "
            "cannot be told apart from the other; simulate another prompt."
        )
    found = torch.searchsorted(prompt_prints, _fingerprints(stored)).clamp(max=prompt_keys.shape[-2] - 1)
    positions = order.gather(-1, found)
    copied = prompt_keys.gather(2, positions[..., None].expand_as(stored))
    if not bool((copied == stored).all(-1)[slot_valid].all()):
        raise ValueError("A kept key matches no prompt key: the cache was not compressed from these prefills.")
    # Padding slots point at an extra column, dropped after the scatter, so they never mark a prompt token.
    padding_column = prompt_keys.shape[-2]
    kept = torch.zeros(*stored.shape[:2], padding_column + 1, dtype=torch.bool)
    kept.scatter_(-1, positions.masked_fill(~slot_valid, padding_column), True)
    return kept[..., :padding_column]


def _fingerprints(keys: torch.Tensor) -> torch.Tensor:
    """One integer per key vector, a weighted sum of its bits: exact, so equal for copies whatever the shape."""
    bits = keys.contiguous().view(torch.int16).long()
    # 16-bit words times weights below 2**20 sum within int64 for any head size.
    weights = torch.randint(1, 2**20, (bits.shape[-1],), generator=torch.Generator().manual_seed(0))
    return (bits * weights).sum(-1)


def summarize(prompts: list[dict]) -> list[dict]:
    """Per (method, budget, block size), each layout's slots as a share of the full cache's and the share of the
    prompt's blocks freed per layer and in every layer, averaged over prompts."""
    groups: dict[tuple, list[dict]] = {}
    for prompt in prompts:
        for row in prompt["rows"]:
            groups.setdefault((row["method"], row["budget"], row["block_size"]), []).append(row)
    summary = []
    for (method, budget, block_size), rows in groups.items():
        per_layer = torch.tensor(
            [[freed / row["blocks_per_layer"] for freed in row["freed_blocks_per_layer"]] for row in rows]
        ).mean(0)
        entry = {
            "method": method,
            "budget": budget,
            "block_size": block_size,
            "prompts": len(rows),
            "freed_blocks_per_layer": per_layer.tolist(),
            "freed_blocks_all_layers": _mean(
                [row["freed_blocks_all_layers"] / row["blocks_per_layer"] for row in rows]
            ),
        }
        for key in LAYOUTS:
            entry[key.removesuffix("_slots")] = _mean([row[key] / row["full_slots"] for row in rows])
        summary.append(entry)
    return summary


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def markdown_table(summary: list[dict]) -> str:
    header = (
        "| method | budget | block | freed blocks per layer: mean (min-max over layers) | freed in every layer | "
        + " | ".join(LAYOUTS.values())
        + " |"
    )
    lines = [header, "|" + " --- |" * (5 + len(LAYOUTS))]
    for entry in summary:
        per_layer = entry["freed_blocks_per_layer"]
        cells = [
            entry["method"],
            str(entry["budget"]),
            str(entry["block_size"]),
            f"{_percent(_mean(per_layer))} ({_percent(min(per_layer))}-{_percent(max(per_layer))})",
            _percent(entry["freed_blocks_all_layers"]),
            *(_percent(entry[key.removesuffix("_slots")]) for key in LAYOUTS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _percent(share: float) -> str:
    return f"{100 * share:.1f}%"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(DEFAULT_TASKS), help="Suite families, one prompt each.")
    parser.add_argument("--length", type=int, default=2048, help="Prompt length the samples are built for.")
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), help="Evaluation method names.")
    parser.add_argument("--budgets", nargs="+", type=int, default=[128, 256], help="Tokens per layer and KV head.")
    parser.add_argument("--block-sizes", nargs="+", type=int, default=[16, 32], help="Token slots per block.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the task samples.")
    parser.add_argument("--out", type=Path, required=True, help="JSON results file; a rerun resumes it.")
    args = parser.parse_args(argv)
    for name in args.methods:
        if not isinstance(get_method(name), CacheMethod):
            raise ValueError(
                f"--methods {name} does not compress with a scorer and an allocation alone; pass methods such as "
                f"{', '.join(DEFAULT_METHODS)}."
            )
    return args


def settings_of(args: argparse.Namespace) -> dict:
    return {
        "model": DEFAULT_MODEL,
        "tasks": args.tasks,
        "length": args.length,
        "methods": args.methods,
        "budgets": args.budgets,
        "block_sizes": args.block_sizes,
        "seed": args.seed,
        "mode": "question-aware",
    }


def resumed_prompts(out: Path, settings: dict) -> list[dict]:
    """The prompts already done in `out`, refused if it was written with other settings."""
    if not out.exists():
        return []
    previous = json.loads(out.read_text())
    changed = [key for key in settings if previous["settings"].get(key) != settings[key]]
    if changed:
        raise ValueError(
            f"{out} was written with other settings ({', '.join(changed)}): pass the same settings to resume it, or "
            "another --out."
        )
    return previous["prompts"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_of(args)
    prompts = resumed_prompts(args.out, settings)
    done = {prompt["sample_id"] for prompt in prompts}
    model, tokenizer = load_model(DEFAULT_MODEL, adapter=DEFAULT_MODEL)
    samples = build_samples(tokenizer, tuple(args.tasks), (args.length,), 1, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for sample in tqdm([sample for sample in samples if sample.id not in done], desc="prompts"):
        started = time.perf_counter()
        run = start_run(model, tokenizer, sample, "question-aware")
        prefills = run.recording.prefills
        rows = []
        for name in args.methods:
            method = get_method(name)
            for budget in args.budgets:
                # A batch of one, unpadded: row 0 of the masks, every token real.
                kept = kept_token_masks(method(run, budget), prefills)[:, 0]
                for block_size in args.block_sizes:
                    usage = paged_block_usage(kept, prefills[0].valid[0], block_size)
                    rows.append({"method": name, "budget": budget, "block_size": block_size, **usage})
        seconds = round(time.perf_counter() - started, 1)
        prompts.append({"sample_id": sample.id, "family": sample.family, "seconds": seconds, "rows": rows})
        summary = summarize(prompts)
        args.out.write_text(json.dumps({"settings": settings, "summary": summary, "prompts": prompts}, indent=1))
    print(markdown_table(summarize(prompts)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
