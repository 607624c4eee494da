"""Whether two `lookahead-cache eval` run folders made the same predictions, row by row, timings aside.

A refactoring that must not change results is checked by running one eval command on the code before and after it
(e.g. a `git worktree` of the earlier commit on PYTHONPATH) and comparing the two folders:

    PYTHONPATH=../before/src python -m lookahead_cache.cli eval --tasks niah_multikey doc_qa variable_tracking \
        --lengths 2048 --samples 1 --budgets 64 128 --methods full snapkv pyramidkv adakv lukv laq oracle lookahead \
        lookahead-lukv --out /tmp/before
    PYTHONPATH=src python -m lookahead_cache.cli eval ... --out /tmp/after
    python scripts/compare_predictions.py /tmp/before /tmp/after

Exits 1 and lists the rows that differ (prediction, score, kept tokens, bytes, ...) if any does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lookahead_cache.run_folder import read_jsonl

# Wall-clock measurements, which differ between any two runs.
TIMINGS = ("prefill_s", "compress_s")
ROW_KEY = ("sample_id", "mode", "method", "budget")


def rows_by_key(folder: Path) -> dict[tuple, dict]:
    rows = read_jsonl(folder / "predictions.jsonl")
    return {tuple(row[name] for name in ROW_KEY): {k: v for k, v in row.items() if k not in TIMINGS} for row in rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before, after = rows_by_key(args.before), rows_by_key(args.after)
    if set(before) != set(after):
        print(
            f"The runs hold different rows: only before {sorted(set(before) - set(after))}, only after "
            f"{sorted(set(after) - set(before))}."
        )
        return 1
    differing = [key for key in before if before[key] != after[key]]
    for key in differing:
        changed = {name: (before[key].get(name), after[key].get(name)) for name in before[key] | after[key]}
        print(key, {name: pair for name, pair in changed.items() if pair[0] != pair[1]})
    print(f"{len(before) - len(differing)} of {len(before)} rows identical (timings {', '.join(TIMINGS)} aside).")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
