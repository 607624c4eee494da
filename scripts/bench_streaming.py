"""Memory and decode speed of full, one-shot, streaming and decode-time eviction as prompts and answers grow, at a real
model's head geometry.

A random-weight Llama with Llama-3.1-8B's attention geometry (32 query / 8 KV heads, head_dim 128, hidden 4096) and a
few layers, so that a CPU can run prompts of 4k to 32k tokens; its MLP is narrow (`--intermediate-size`), since
eviction touches attention and the KV cache only. For each prompt length and method, in a fresh subprocess (its peak
memory is its own):

* `full`: a `DynamicCache`;
* `one-shot`: `LookaheadCache(budget)`, the prompt read in one forward and evicted layer by layer;
* `streaming`: the same cache with `generate(prefill_chunk_size=chunk)`, evicted after every chunk;
* `decode-evicting`: one-shot with `generation_budget`, which bounds the generated tokens too.

It prints and writes (`--out`, JSON lines) the peak KV bytes over the prefill and the `--new-tokens` decoding steps
after it (`LookaheadCache.peak_nbytes` for the prefill, the cache's bytes after every step), the process's peak
resident memory, and decode milliseconds per token, and plots peak KV and peak memory against the tokens seen, prompt
and generated (`--plot`). Peak KV of streaming stays at layers * budget + chunk tokens per KV head whatever the
prompt, and decode-evicting at layers * (budget + generation budget) whatever the answer; full grows with both.

    python scripts/bench_streaming.py --lengths 4096 8192 16384 32768 --out results/bench_streaming_cpu.jsonl \
        --plot docs/results/bench_streaming_cpu.png
    # lengths measured in separate runs into one file, then its curve:
    python scripts/bench_streaming.py --out results/bench_streaming_cpu.jsonl --plot-only \
        --plot docs/results/bench_streaming_cpu.png
    python scripts/bench_streaming.py --lengths 1024 --new-tokens 4096 --methods full one-shot decode-evicting \
        --out results/bench_long_generation_cpu.jsonl --plot docs/results/bench_long_generation_cpu.png

On a GPU, add `--device cuda`: the same command.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("full", "one-shot", "streaming", "decode-evicting")


def build_model(args: argparse.Namespace):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1024,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden_size // args.heads,
        max_position_embeddings=max(args.lengths) + args.new_tokens + 1,
        pad_token_id=0,
        eos_token_id=None,
    )
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=getattr(torch, args.dtype))
    return model.to(args.device).eval()


def measure(args: argparse.Namespace, method: str, length: int) -> dict:
    """One method at one prompt length, in this process."""
    import torch
    from transformers import DynamicCache

    from lookahead_cache import LookaheadCache
    from lookahead_cache.prefill import CACHE_ARGUMENT

    model = build_model(args)
    input_ids = torch.randint(3, 1024, (1, length), generator=torch.Generator().manual_seed(length)).to(args.device)
    settings = dict(budget=args.budget, scorer="snapkv", sink=args.sink, window=args.window)
    if method == "decode-evicting":
        settings.update(generation_budget=args.generation_budget, generation_interval=args.generation_interval)
    cache = DynamicCache() if method == "full" else LookaheadCache(**settings)
    chunk = {"prefill_chunk_size": args.chunk} if method == "streaming" else {}
    with torch.no_grad():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **{CACHE_ARGUMENT: cache},
            max_new_tokens=1,
            do_sample=False,
            **chunk,
        )
        peak_kv = kv_bytes(cache) if method == "full" else cache.peak_nbytes
        tokens = output[:, -1:]
        if args.device == "cuda":
            torch.cuda.synchronize()
        decode_s = 0.0
        for _ in range(args.new_tokens):
            start = time.perf_counter()
            logits = model(input_ids=tokens, **{CACHE_ARGUMENT: cache}, use_cache=True).logits
            tokens = logits[:, -1:].argmax(-1)
            if args.device == "cuda":
                torch.cuda.synchronize()
            decode_s += time.perf_counter() - start
            # A step holds the most right after it: the new token is in, and a decode-time eviction follows it.
            peak_kv = max(peak_kv, kv_bytes(cache))
        decode_ms = decode_s * 1000 / args.new_tokens
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {
        "method": method,
        "prompt_tokens": length,
        "budget": None if method == "full" else args.budget,
        "chunk": args.chunk if method == "streaming" else None,
        "generation_budget": args.generation_budget if method == "decode-evicting" else None,
        "new_tokens": args.new_tokens,
        "peak_kv_bytes": int(peak_kv),
        "peak_process_bytes": int(peak_rss),
        "decode_ms_per_token": round(decode_ms, 3),
    }


def kv_bytes(cache) -> int:
    """Bytes of the keys and values a cache holds now."""
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--budget", type=int, default=512)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--sink", type=int, default=4)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--generation-budget", type=int, default=512, help="Generated tokens kept (decode-evicting).")
    parser.add_argument("--generation-interval", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=4096)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--intermediate-size", type=int, default=1024)
    parser.add_argument("--new-tokens", type=int, default=16, help="Decoding steps after the prompt, timed.")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, help="JSON lines file the rows are appended to.")
    parser.add_argument(
        "--plot",
        type=Path,
        help="PNG of peak KV and peak process memory against prompt length: of every row in --out (this run's "
        "appended) when given, else of this run's rows.",
    )
    parser.add_argument(
        "--plot-only", action="store_true", help="Measure nothing: plot the rows --out holds (runs made one by one)."
    )
    # One measurement in this process, for the subprocesses `run` starts.
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "LENGTH"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace, argv: list[str]) -> list[dict]:
    """Every method and length, each in a subprocess of its own (given the same arguments, `argv`)."""
    rows = []
    forwarded = list(argv)
    for flag in ("--out", "--plot"):  # the parent writes those
        if flag in forwarded:
            index = forwarded.index(flag)
            del forwarded[index : index + 2]
    for length in args.lengths:
        for method in args.methods:
            result = subprocess.run(
                [sys.executable, __file__, *forwarded, "--one", method, str(length)],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(result.stdout.strip().splitlines()[-1])
            row.update(device=args.device, machine=platform.machine(), layers=args.layers, dtype=args.dtype)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for method in METHODS:
        points = sorted((row["prompt_tokens"] + row["new_tokens"], row) for row in rows if row["method"] == method)
        if not points:
            continue
        lengths = [length for length, _ in points]
        axes[0].plot(lengths, [row["peak_kv_bytes"] / 2**20 for _, row in points], marker="o", label=method)
        axes[1].plot(lengths, [row["peak_process_bytes"] / 2**20 for _, row in points], marker="o", label=method)
    for axis, title in zip(axes, ("peak KV (MiB)", "peak process memory (MiB)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("tokens seen (prompt and generated)")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.one:
        print(json.dumps(measure(args, args.one[0], int(args.one[1]))))
        return 0
    if args.plot_only and not (args.out and args.plot):
        raise SystemExit("--plot-only plots the rows of --out into --plot: pass both.")
    rows = [] if args.plot_only else run(args, argv)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as file:
            file.writelines(json.dumps(row) + "\n" for row in rows)
        rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    if args.plot:
        plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
