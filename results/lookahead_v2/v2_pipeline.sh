#!/usr/bin/env bash
set -euxo pipefail
cd /work/main
while ! grep -q TRAIN_DONE logs/prepare_v2.log; do
  pgrep -f prepare_v2.py > /dev/null || { echo "prepare died"; exit 1; }
  sleep 30
done
date
lookahead-cache train --out runs/train-v2 --lengths 1024 2048 --samples-per-task 20 --response-tokens 48 --epochs 3 \
    --validation-samples-per-task 2 --save-every 25
date
python runs/val_compare.py src/lookahead_cache/default_adapter runs/train-v2/adapter
date
lookahead-cache profile --adapter runs/train-v2/adapter --scorers lookahead --context-length 4096 --out runs/lukv-v2
cp runs/lukv-v2/lukv_profile_lookahead.* runs/train-v2/adapter/
date
lookahead-cache eval --quick --tasks niah_multikey niah_multivalue frequent_words --samples 6 \
    --methods full lookahead lookahead-adakv lookahead-lukv --adapter runs/train-v2/adapter --out runs/heldout-v2
date
lookahead-cache eval --quick --methods full lookahead lookahead-adakv lookahead-lukv --budgets 64 128 256 \
    --adapter runs/train-v2/adapter --out runs/quick-v2
date
echo PIPELINE_DONE
