#!/usr/bin/env bash
# Regenerates docs/results.md: the quick evaluation suite on the embedded SmolLM2-135M-Instruct, kvpress beside
# our snapkv/streaming at the same fraction of each prompt, and the speed/memory benchmark at 2k/4k/8k.
# Every step is resumable: rerunning skips what runs/quick already holds. The first step takes about 32 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/quick}

# 1. Every method at token budgets 64/128/256, one recorded prefill per sample.
lookahead-cache eval --quick --out "$OUT"
# 2. Our snapkv and streaming at 10% of each prompt, the ratio kvpress runs at below.
lookahead-cache eval --quick --methods full snapkv streaming --budgets 0.1 --out "$OUT"
# 3. kvpress (its own virtualenv: it needs transformers < 5.3) on the same samples (token ids) and ratio.
bash scripts/kvpress/setup_venv.sh
.venv-kvpress/bin/python scripts/kvpress/run_kvpress.py --samples "$OUT/samples.jsonl" --presses snapkv streaming \
    --fractions 0.1 --modes question-aware --out "$OUT/predictions-kvpress.jsonl"
# 4. The page, its figures, and the raw rows it was computed from; written again after the benchmark.
python scripts/results_page.py "$OUT"
# 5. Prefill overhead, decode speed and memory against the full cache.
[ -f "$OUT/bench.json" ] || lookahead-cache bench --lengths 2048 4096 8192 --budget 256 --scorers snapkv \
    --decode-tokens 16 --repeats 2 --out "$OUT/bench.json"
python scripts/results_page.py "$OUT"
