"""Decode cost of the KV storage alone: per-head budgets stored packed, against uniform storage and the full cache.

A decoding step of a compressed model differs from another only where the cache is touched: appending the new
token's key and value, the layer's mask, and attention over the stored tokens. This benchmark times exactly that,
for the 30 layers of SmolLM2-135M-Instruct (9 query / 3 KV heads, head_dim 64, float32 by default), without the
weight matmuls that dominate a full decode step on a CPU and make whole-model timings noisy (`--device cuda
--dtype bfloat16` runs the same on a GPU). Per step and layer, with the library's own layer classes, mask and
attention functions:

* ``full``: a full cache of the prompt (`DynamicLayer`), SDPA;
* ``uniform``: every head keeps `budget` tokens (`PaddedLayer`), SDPA; the same total size as the packed layers;
* ``packed-sdpa``: per-head counts from the LU-KV profile shipped with the default adapter (lookahead scorer: the
  most uneven allocation we ship), stored packed (`PackedLayer`), attended by SDPA over its padded view;
* ``packed-varlen``: the same layers attended in place by `lookahead_varlen` (the Triton kernel on GPU, one masked
  attention per layer over the row buffer on CPU).

Rounds are interleaved; each prints the median ms per decoded token (all layers) and the ratios to ``uniform``.

    python scripts/bench_head_storage.py --lengths 4096 8192 --budget 256 --out results/bench_head_storage_cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from types import SimpleNamespace

import torch
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from lookahead_cache.config import DEFAULT_SINK, DEFAULT_WINDOW
from lookahead_cache.decoding import PackedAttention, compressed_layer_mask, lookahead_varlen_attention
from lookahead_cache.default_model import DEFAULT_ADAPTER_DIR
from lookahead_cache.profiling.profile import HeadProfile
from lookahead_cache.selection import select_tokens
from lookahead_cache.storage import PackedLayer, PaddedLayer

LAYERS, Q_HEADS, KV_HEADS, HEAD_DIM = 30, 9, 3, 64
STORAGES = ("full", "uniform", "packed-sdpa", "packed-varlen")


def build_layers(storage: str, prompt: torch.Tensor, counts: torch.Tensor, budget: int) -> list:
    """One cache's layers holding `prompt` (`[layers, 2, 1, kv_heads, length, head_dim]`) compressed for `storage`."""
    layers = []
    length = prompt.shape[-2]
    for index, (keys, values) in enumerate(prompt):
        if storage == "full":
            layer = DynamicLayer()
            layer.update(keys, values)
            layers.append(layer)
            continue
        heads = torch.full((1, KV_HEADS), budget) if storage == "uniform" else counts[index][None]
        heads = heads.to(keys.device)
        scores = torch.rand(1, KV_HEADS, length, generator=torch.Generator().manual_seed(index)).to(keys.device)
        valid = torch.ones(1, length, dtype=torch.bool, device=keys.device)
        positions, slot_valid = select_tokens(scores, valid, heads, sink=DEFAULT_SINK, window=DEFAULT_WINDOW)
        if storage == "uniform":
            layer = PaddedLayer.from_selection(keys, values, positions, slot_valid, length)
        else:
            layer = PackedLayer.from_selection(keys, values, positions, slot_valid, length)
            layer.attends_packed = storage == "packed-varlen"
        layers.append(layer)
    return layers


def decode(layers: list, storage: str, steps: torch.Tensor) -> list[float]:
    """Seconds per decoded token: append, mask and attention for every layer."""
    module = SimpleNamespace(
        num_key_value_groups=Q_HEADS // KV_HEADS,
        is_causal=True,
        training=False,
        config=SimpleNamespace(_attn_implementation="lookahead_varlen" if storage == "packed-varlen" else "sdpa"),
    )
    query = steps[0][0]
    hidden = query.new_zeros(1, 1, Q_HEADS * HEAD_DIM)
    synchronize = torch.cuda.synchronize if query.is_cuda else lambda: None
    seconds = []
    for query, keys, values in steps:
        synchronize()
        start = time.perf_counter()
        for layer in layers:
            if storage == "packed-varlen":
                mask = PackedAttention(layer)
            elif storage == "full":
                mask = None
            else:
                mask = compressed_layer_mask(layer, module, None, hidden)
            all_keys, all_values = layer.update(keys, values)
            attend = lookahead_varlen_attention if storage == "packed-varlen" else sdpa_attention_forward
            attend(module, query, all_keys, all_values, mask, scaling=HEAD_DIM**-0.5)
        synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192])
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--steps", type=int, default=64, help="Decoded tokens per round.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda (packed-varlen then runs the Triton kernel).")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--out", help="Write the results as JSON here.")
    args = parser.parse_args()
    torch.manual_seed(0)
    profile = HeadProfile.from_pretrained(DEFAULT_ADAPTER_DIR, scorer="lookahead")
    results = []
    for length in args.lengths:
        counts = profile.keep_counts(length, args.budget, floor=DEFAULT_SINK + DEFAULT_WINDOW)
        options = {"device": args.device, "dtype": getattr(torch, args.dtype)}
        prompt = torch.randn(LAYERS, 2, 1, KV_HEADS, length, HEAD_DIM, **options)
        steps = [
            (
                torch.randn(1, Q_HEADS, 1, HEAD_DIM, **options),
                torch.randn(1, KV_HEADS, 1, HEAD_DIM, **options),
                torch.randn(1, KV_HEADS, 1, HEAD_DIM, **options),
            )
            for _ in range(args.steps)
        ]
        timings = {storage: [] for storage in STORAGES}
        for _ in range(args.rounds):
            for storage in STORAGES:
                # The first steps warm up the allocator and the tail's first growth.
                timings[storage] += decode(build_layers(storage, prompt, counts, args.budget), storage, steps)[4:]
        rows = {}
        for storage in STORAGES:
            layers = build_layers(storage, prompt, counts, args.budget)
            rows[storage] = dict(
                length=length,
                budget=args.budget,
                storage=storage,
                ms_per_token=1000 * statistics.median(timings[storage]),
                prompt_kv_mib=sum(_nbytes(layer) for layer in layers) / 2**20,
            )
        for row in rows.values():
            row["vs_uniform"] = row["ms_per_token"] / rows["uniform"]["ms_per_token"]
            results.append(row)
            print(
                f"{length:>6} {row['storage']:>14} {row['ms_per_token']:8.3f} ms/token  {row['vs_uniform']:5.2f}x "
                f"uniform  {row['prompt_kv_mib']:6.2f} MiB"
            )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(settings=vars(args), results=results), f, indent=2)


def _nbytes(layer) -> int:
    if isinstance(layer, PackedLayer):
        return layer.nbytes()
    return layer.keys.nbytes + layer.values.nbytes


if __name__ == "__main__":
    main()
