"""Benchmark of one decoding step's attention over a layer with per-head budgets.

Llama-3-8B-like layer (32 query heads over 8 KV heads, head_dim 128, bf16), batch 1 and 8. Each KV head keeps its
own number of prompt tokens (drawn around a mean budget, as head-level allocations give them), plus 16 decoded
tokens. Compared side by side, in one run:

* ``varlen``: the Triton kernel on the packed storage (no padding stored or read);
* ``sdpa-padded``: SDPA over the same tokens padded to the layer's longest head, with a mask (what masking
  implementations of head-level budgets do);
* ``sdpa-uniform``: SDPA over uniform storage of the same total size (every head at the mean budget);
* ``sdpa-full``: SDPA over the full, uncompressed cache of the prompt (4k and 8k tokens).

Prints milliseconds per call and ratios against ``sdpa-uniform`` and ``sdpa-full``, twice: launched one call at a
time (what eager decoding pays, host overhead included) and replayed from a CUDA graph (device time, as a decoder
captured in a graph pays). The kernel is handed the longest segment, as the cache hands it, so it never syncs.

    python -m lookahead_cache.kernels.benchmark_varlen_decode

Needs a CUDA GPU; elsewhere it says so and exits 0.
"""

import torch
import torch.nn.functional as F

from .varlen_decode import varlen_decode_attention_reference, varlen_decode_attention_triton

Q_HEADS, KV_HEADS, HEAD_DIM, DECODED = 32, 8, 128, 16
DTYPE = torch.bfloat16
CASES = [(batch, prompt, budget) for batch in (1, 8) for prompt in (4096, 8192) for budget in (256, 1024)]


def make_case(batch: int, prompt: int, budget: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    # Per-head counts spread 4x around the budget, rescaled so that the layer's total is batch x heads x budget.
    spread = torch.exp(torch.randn(batch, KV_HEADS, generator=generator) * 0.7)
    lengths = (spread / spread.mean(-1, keepdim=True) * budget).round().long().clamp(16, prompt)
    total = int(lengths.sum())
    longest = int(lengths.max())
    starts = (lengths.flatten().cumsum(0) - lengths.flatten()).view_as(lengths)
    device = "cuda"

    def rand(*shape):
        return torch.randn(*shape, device=device, dtype=DTYPE)

    packed = dict(
        query=rand(batch, Q_HEADS, HEAD_DIM),
        prompt_keys=rand(total, HEAD_DIM),
        prompt_values=rand(total, HEAD_DIM),
        prompt_starts=starts.to(device),
        prompt_lengths=lengths.to(device),
        tail_keys=rand(batch, KV_HEADS, DECODED, HEAD_DIM),
        tail_values=rand(batch, KV_HEADS, DECODED, HEAD_DIM),
        tail_length=DECODED,
        scaling=HEAD_DIM**-0.5,
        max_prompt_length=longest,
    )
    slot = torch.arange(longest + DECODED, device=device)
    padded_mask = (slot >= (longest - lengths.to(device))[..., None]).repeat_interleave(Q_HEADS // KV_HEADS, 1)
    mean = total // (batch * KV_HEADS)
    return dict(
        packed=packed,
        padded=(*(rand(batch, KV_HEADS, longest + DECODED, HEAD_DIM) for _ in "kv"), padded_mask[:, :, None]),
        uniform=tuple(rand(batch, KV_HEADS, mean + DECODED, HEAD_DIM) for _ in "kv"),
        full=tuple(rand(batch, KV_HEADS, prompt + DECODED, HEAD_DIM) for _ in "kv"),
    )


def sdpa(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask=None) -> torch.Tensor:
    return F.scaled_dot_product_attention(query[:, :, None], keys, values, attn_mask=mask, enable_gqa=True)


def main() -> None:
    if not torch.cuda.is_available():
        print("benchmark_varlen_decode: no CUDA GPU available, nothing to benchmark (the Triton kernel needs one).")
        return
    import triton.testing  # Deferred: CPU-only installs, which stop above, may lack Triton.

    agreement = make_case(2, 4096, 512)["packed"]
    torch.testing.assert_close(
        varlen_decode_attention_triton(**agreement).float(),
        varlen_decode_attention_reference(**agreement).float(),
        rtol=2e-2,
        atol=2e-2,
    )
    for title, bench in (
        ("eager, one call at a time", triton.testing.do_bench),
        ("CUDA graph replay", triton.testing.do_bench_cudagraph),
    ):
        print(f"\n{title}")
        print(f"{'batch':>5} {'prompt':>6} {'budget':>6} | {'varlen':>8} {'padded':>8} {'uniform':>8} {'full':>8} ms"
              f" | varlen/uniform  varlen/padded  full/varlen")  # fmt: skip
        for batch, prompt, budget in CASES:
            case = make_case(batch, prompt, budget)
            query = case["packed"]["query"]
            packed, padded, uniform, full = case["packed"], case["padded"], case["uniform"], case["full"]
            timings = {
                "varlen": lambda packed=packed: varlen_decode_attention_triton(**packed),
                "padded": lambda query=query, padded=padded: sdpa(query, *padded),
                "uniform": lambda query=query, uniform=uniform: sdpa(query, *uniform),
                "full": lambda query=query, full=full: sdpa(query, *full),
            }
            ms = {name: bench(function) for name, function in timings.items()}
            print(
                f"{batch:>5} {prompt:>6} {budget:>6} | {ms['varlen']:8.4f} {ms['padded']:8.4f} {ms['uniform']:8.4f} "
                f"{ms['full']:8.4f}    | {ms['varlen'] / ms['uniform']:14.2f} {ms['varlen'] / ms['padded']:14.2f} "
                f"{ms['full'] / ms['varlen']:12.2f}"
            )


if __name__ == "__main__":
    main()
