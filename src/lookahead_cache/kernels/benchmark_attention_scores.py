"""Benchmark of the fused attention-score kernel against its torch reference.

Llama-3-8B-like layer (32 query heads over 8 KV heads, head_dim 128, bf16), one
sequence, a 32-query SnapKV observation window, prompt lengths 1k to 32k.
Throughput counts the bytes of keys and queries read once, the floor for any
implementation; the torch reference also writes and re-reads float32 logits.

    python -m lookahead_cache.kernels.benchmark_attention_scores

Needs a CUDA GPU; elsewhere it says so and exits 0.
"""

import torch

from .attention_scores import attention_scores_reference, attention_scores_triton

BATCH, Q_HEADS, KV_HEADS, HEAD_DIM, NUM_QUERIES = 1, 32, 8, 128, 32
DTYPE = torch.bfloat16
KEY_LENGTHS = [1024 * 2**i for i in range(6)]
PROVIDERS = {"triton": attention_scores_triton, "torch": attention_scores_reference}


def make_inputs(num_keys: int) -> dict:
    """Queries at the last NUM_QUERIES prompt positions, as in SnapKV, with no padding."""
    queries = torch.randn(BATCH, Q_HEADS, NUM_QUERIES, HEAD_DIM, device="cuda", dtype=DTYPE)
    keys = torch.randn(BATCH, KV_HEADS, num_keys, HEAD_DIM, device="cuda", dtype=DTYPE)
    positions = torch.arange(num_keys - NUM_QUERIES, num_keys, device="cuda")
    return dict(queries=queries, keys=keys, scaling=HEAD_DIM**-0.5, query_positions=positions)


def check_agreement() -> None:
    """A speedup only counts if both providers compute the same scores."""
    inputs = make_inputs(3000)
    queries, keys = inputs.pop("queries"), inputs.pop("keys")
    torch.testing.assert_close(
        PROVIDERS["triton"](queries, keys, **inputs),
        PROVIDERS["torch"](queries, keys, **inputs),
        rtol=1e-3,
        atol=1e-5,
    )


def main() -> None:
    if not torch.cuda.is_available():
        print("benchmark_attention_scores: no CUDA GPU available, nothing to benchmark (the Triton kernel needs one).")
        return
    import triton.testing  # Deferred: CPU-only installs, which stop above, may lack Triton.

    check_agreement()

    @triton.testing.perf_report(
        triton.testing.Benchmark(
            x_names=["num_keys"],
            x_vals=KEY_LENGTHS,
            x_log=True,
            line_arg="provider",
            line_vals=list(PROVIDERS),
            line_names=["Triton", "Torch"],
            styles=[("blue", "-"), ("green", "-")],
            ylabel="GB/s",
            plot_name="attention-scores-llama8b-bf16-nq32",
            args={},
        )
    )
    def bench(num_keys: int, provider: str):
        inputs = make_inputs(num_keys)
        queries, keys = inputs.pop("queries"), inputs.pop("keys")
        function = PROVIDERS[provider]
        ms, min_ms, max_ms = triton.testing.do_bench(
            lambda: function(queries, keys, **inputs), quantiles=[0.5, 0.2, 0.8]
        )
        gigabytes = (queries.numel() + keys.numel()) * queries.element_size() * 1e-9
        # Slowest time gives the lowest throughput, hence the swapped bounds.
        return gigabytes / (ms * 1e-3), gigabytes / (max_ms * 1e-3), gigabytes / (min_ms * 1e-3)

    results = bench.run(print_data=True, show_plots=False, return_df=True)
    # Both providers read the same bytes, so the throughput ratio is the time ratio.
    for num_keys, speedup in zip(results["num_keys"], results["Triton (GB/s)"] / results["Torch (GB/s)"]):
        print(f"T={int(num_keys):>6}: triton is {speedup:.2f}x torch")


if __name__ == "__main__":
    main()
