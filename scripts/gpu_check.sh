#!/usr/bin/env bash
# The device checks in one command, for a lent GPU machine: the Triton kernels' tests on CUDA, both kernel
# benchmarks and the per-head storage decode benchmark. Their time limits add up to 8.5 minutes, under the device
# tool's 10 per command. Results go to $OUT (the device tool's folder), or to results/gpu elsewhere; compare the
# benchmarks with results/gpu_h200/ (the first H200 run; docs/measurements.md#on-a-gpu).
#
#     bash scripts/gpu_check.sh
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
TRITON_INTERPRET=0 timeout 180 python -m pytest -q -p no:cacheprovider tests/kernels/test_kernel_attention_scores.py \
    tests/kernels/test_kernel_varlen_decode.py tests/storage/test_packed.py > "$OUT/tests.txt" 2>&1
timeout 90 python -m lookahead_cache.kernels.benchmark_attention_scores > "$OUT/bench_attention_scores.txt" 2>&1
timeout 90 python -m lookahead_cache.kernels.benchmark_varlen_decode > "$OUT/bench_varlen_decode.txt" 2>&1
timeout 150 python scripts/bench_head_storage.py --device cuda --dtype bfloat16 --out "$OUT/bench_head_storage.json" \
    > "$OUT/bench_head_storage.txt" 2>&1
tail -n 3 "$OUT"/*.txt
