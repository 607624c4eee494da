#!/usr/bin/env bash
# The device checks, for a lent GPU machine, in two commands of under 10 minutes each (the device tool's limit):
#
#     bash scripts/gpu_check.sh            # the Triton kernels' tests on CUDA, a model placed over GPU and CPU
#                                          # (device_map) in the cache and in training, both kernel benchmarks and
#                                          # the per-head storage decode benchmark (time limits: 9.5 minutes)
#
# Tensor parallelism needs two GPUs; the machines lent have one, so it is tested on CPU processes (gloo) only
# (tests/cache/test_tensor_parallel.py).
#     bash scripts/gpu_check.sh streaming  # memory and decode speed of full, one-shot, streaming and decode-time
#                                          # eviction at Llama-3.1-8B's head geometry, 4k to 32k (time limits: 8)
#
# Results go to $OUT (the device tool's folder), or to results/gpu elsewhere; compare the kernel benchmarks with
# results/gpu_h200/ (the first H200 run; docs/measurements.md#on-a-gpu) and the streaming rows with
# results/bench_streaming_cpu.jsonl.
#
# The machine has no network: it uses the torch, triton and transformers installed there.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/install.txt" 2>&1 || cat "$OUT/install.txt"
{
    nvidia-smi --query-gpu=name,driver_version --format=csv
    python -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
} > "$OUT/gpu.txt" 2>&1
if [[ "${1:-}" == streaming ]]; then
    timeout 300 python scripts/bench_streaming.py --device cuda --dtype bfloat16 --lengths 4096 8192 16384 32768 \
        --methods full one-shot streaming --out "$OUT/bench_streaming_cuda.jsonl" > "$OUT/bench_streaming.txt" 2>&1
    timeout 180 python scripts/bench_streaming.py --device cuda --dtype bfloat16 --lengths 1024 --new-tokens 4096 \
        --methods full one-shot decode-evicting --out "$OUT/bench_long_generation_cuda.jsonl" \
        > "$OUT/bench_long_generation.txt" 2>&1
    tail -n 4 "$OUT"/bench_*.txt
    exit 0
fi
TRITON_INTERPRET=0 timeout 180 python -m pytest -q -p no:cacheprovider tests/kernels/test_kernel_attention_scores.py \
    tests/kernels/test_kernel_varlen_decode.py tests/storage/test_packed.py tests/cache/test_device_map.py \
    > "$OUT/tests.txt" 2>&1
# Training a frozen model split over the GPU and the CPU by device_map, against the model in place on the GPU.
timeout 60 python -m pytest -q -p no:cacheprovider -m "not slow" tests/training/test_device_map_training.py \
    > "$OUT/tests_device_map_training.txt" 2>&1
timeout 90 python -m lookahead_cache.kernels.benchmark_attention_scores > "$OUT/bench_attention_scores.txt" 2>&1
timeout 90 python -m lookahead_cache.kernels.benchmark_varlen_decode > "$OUT/bench_varlen_decode.txt" 2>&1
timeout 150 python scripts/bench_head_storage.py --device cuda --dtype bfloat16 --out "$OUT/bench_head_storage.json" \
    > "$OUT/bench_head_storage.txt" 2>&1
tail -n 3 "$OUT"/*.txt
