#!/usr/bin/env bash
# The comparison that decides whether a lookahead adapter replaces the shipped one: the suite's held-out families
# (no training prompt's generator shares them) and its training families, 2048-token prompts, 20 samples each,
# budgets 64 / 128 / 256, question-aware.
#
#   bash scripts/heldout_eval.sh                         # the methods without an adapter, and the shipped adapter
#   ADAPTER=runs/mix-train/best_adapter bash scripts/heldout_eval.sh   # a candidate, into a folder of its own
#
# Resumable: rerun the same command after an interruption. The methods that need no adapter (full, snapkv, laq,
# oracle) run once, in $OUT/baselines; each adapter's lookahead rows go to $OUT/<adapter name>, since an eval folder
# refuses to mix rows of two adapters. The candidate needs its own LU-KV profile for lookahead-lukv: this script
# makes it first (`lookahead-cache profile`) when the adapter folder lacks one.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/heldout_mix}
SAMPLES=${SAMPLES:-20}
TASKS=$(python -c "from lookahead_cache.evaluation.tasks import HELD_OUT_TASKS, TRAINING_TASKS; print(*HELD_OUT_TASKS, *TRAINING_TASKS)")
COMMON=(--tasks $TASKS --lengths 2048 --samples "$SAMPLES" --budgets 64 128 256 --modes question-aware)

if [[ -z "${ADAPTER:-}" ]]; then
    lookahead-cache eval "${COMMON[@]}" --methods full snapkv lukv laq oracle --out "$OUT/baselines"
    lookahead-cache eval "${COMMON[@]}" --methods full lookahead lookahead-lukv --out "$OUT/shipped"
else
    if [[ ! -f "$ADAPTER/lukv_profile_lookahead.json" ]]; then
        lookahead-cache profile --adapter "$ADAPTER" --scorers lookahead --out "$ADAPTER.lukv"
        cp "$ADAPTER.lukv"/lukv_profile_lookahead.* "$ADAPTER/"
    fi
    lookahead-cache eval "${COMMON[@]}" --methods full lookahead lookahead-lukv --adapter "$ADAPTER" \
        --out "$OUT/$(basename "$(dirname "$ADAPTER")")-$(basename "$ADAPTER")"
fi
