#!/usr/bin/env bash
# Profiles LU-KV head budgets of SmolLM2-135M-Instruct for the snapkv and lookahead scorers, ships them beside the
# default lookahead adapter (src/lookahead_cache/default_adapter/), and evaluates uniform / adakv / lukv for both
# scorers on the quick suite next to the other methods. Resumable at every step. About 25 minutes on 2 CPU cores.
# eval refuses to resume lookahead rows made with another adapter (or recording none): remove the lookahead*
# rows from $OUT/predictions.jsonl first when the adapter changed.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/lukv-smollm2}
OUT=${OUT:-runs/quick}

lookahead-cache profile --scorers snapkv lookahead --context-length 4096 --out "$RUN"
cp "$RUN"/lukv_profile_* src/lookahead_cache/default_adapter/
lookahead-cache eval --quick --methods full adakv lukv lookahead-adakv lookahead-lukv --out "$OUT"
python scripts/results_page.py "$OUT"
