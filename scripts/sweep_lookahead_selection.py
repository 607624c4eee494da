"""Chooses, by measurement, how the lookahead scorer turns its scores into a kept set: pooling kernel and shift, recent
window.

Every (kernel_size, shift, window, allocation) setting compresses the same recorded prefill with the lookahead scorer at
each budget and answers greedily; scores are the evaluation suite's. The `lukv` allocations (`lukv-layer`: each layer
keeps the budget) need, per kernel size, a LU-KV profile made with the scorer at that kernel size (its ranking orders
the profile's loss curves). The samples come from the families the adapter was trained on, with a seed of their own
(500): the choice sees neither the held-out families (`lookahead_cache.training.HELD_OUT_TASKS`) nor the training
prompts (seed 1000) nor the samples the results are reported on (seed 0). Rows append to OUT/sweep.jsonl (resumable);
the table of mean scores goes to OUT/summary.md.

Usage:
    python scripts/sweep_lookahead_selection.py --adapter src/lookahead_cache/default_adapter --out runs/sweep \
        [--kernel-sizes 1 5] [--shifts 0 2] [--windows 8 32] [--allocations uniform lukv lukv-layer] \
        [--lukv-profiles 1=DIR 5=DIR] [--budgets 64 128 256] [--samples 2] [--seed 500]
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lookahead_cache import LookaheadCache
from lookahead_cache.config import DEFAULT_SINK
from lookahead_cache.evaluation.metrics import score
from lookahead_cache.evaluation.suite import DEFAULT_MODEL, build_samples, start_run
from lookahead_cache.model_loading import load_model
from lookahead_cache.scorers.lookahead import LookaheadScorer
from lookahead_cache.training import TRAINING_TASKS

# Swept allocations: the cache's allocation name and, for LU-KV, the scope of its budget.
ALLOCATIONS = {"uniform": ("uniform", None), "lukv": ("lukv", "model"), "lukv-layer": ("lukv", "layer")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="Lookahead adapter folder (or Hub repo id).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[1, 5])
    parser.add_argument(
        "--shifts", type=int, nargs="+", default=[0], help="Pooling shifts (LookaheadScorer.shift) per kernel size."
    )
    parser.add_argument("--windows", type=int, nargs="+", default=[8, 32])
    parser.add_argument(
        "--allocations",
        nargs="+",
        choices=list(ALLOCATIONS),
        default=["uniform"],
        help="uniform, lukv (the model's total fixed) or lukv-layer (each layer's total fixed, as kvpress does).",
    )
    parser.add_argument(
        "--lukv-profiles",
        nargs="+",
        default=[],
        metavar="KERNEL_SIZE=DIR",
        help="For --allocations lukv: per kernel size, the folder of a profile made with the scorer at that size.",
    )
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--samples", type=int, default=2, help="Samples per training family.")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=500)
    args = parser.parse_args()
    profiles = {int(kernel): directory for kernel, directory in (item.split("=", 1) for item in args.lukv_profiles)}
    missing = [k for k in args.kernel_sizes if k not in profiles]
    if any(allocation.startswith("lukv") for allocation in args.allocations) and missing:
        parser.error(f"--allocations lukv needs --lukv-profiles for kernel sizes {missing} (e.g. 5=DIR).")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sweep.jsonl"
    done = {_key(row) for row in _rows(path)}
    settings = list(itertools.product(args.kernel_sizes, args.shifts, args.windows, args.allocations))
    model, tokenizer = load_model(DEFAULT_MODEL, adapter=args.adapter)
    samples = build_samples(tokenizer, TRAINING_TASKS, (args.length,), args.samples, args.seed)
    with path.open("a") as file, torch.no_grad():
        for sample in tqdm(samples, desc="sweep", unit="sample"):
            todo = [(b, *setting) for b in args.budgets for setting in settings if (sample.id, b, *setting) not in done]
            if todo:
                for row in _sweep_sample(model, tokenizer, sample, todo, profiles):
                    file.write(json.dumps(row) + "\n")
                    file.flush()
    asked = {(sample.id, budget, *setting) for sample in samples for budget in args.budgets for setting in settings}
    summary = _summary([row for row in _rows(path) if _key(row) in asked])
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)


def _sweep_sample(model, tokenizer, sample, todo, profiles):
    run = start_run(model, tokenizer, sample, "question-aware")
    prefills = run.lookahead_prefills()
    for budget in dict.fromkeys(b for b, *_ in todo):
        settings = [setting for b, *setting in todo if b == budget]
        caches = [
            LookaheadCache.from_prefill(
                prefills,
                budget=budget,
                scorer=LookaheadScorer(kernel_size=k, shift=shift),
                sink=DEFAULT_SINK,
                window=w,
                **_allocation(allocation, profiles.get(k)),
            )
            for k, shift, w, allocation in settings
        ]
        for (kernel_size, shift, window, allocation), answer_ids in zip(settings, run.answers(caches)):
            prediction = tokenizer.decode(answer_ids[0], skip_special_tokens=True).strip()
            yield {
                "sample_id": sample.id,
                "family": sample.family,
                "budget": budget,
                "kernel_size": kernel_size,
                "shift": shift,
                "window": window,
                "allocation": allocation,
                "prediction": prediction,
                "score": score(sample.metric, [prediction], [list(sample.answers)])[0],
            }


def _allocation(name: str, profile: str | None) -> dict:
    """The LookaheadCache arguments of a swept allocation."""
    allocation, scope = ALLOCATIONS[name]
    kwargs = {"profile": profile, "scope": scope} if allocation == "lukv" else None
    return {"allocation": allocation, "allocation_kwargs": kwargs}


def _summary(rows: list[dict]) -> str:
    """Mean score x100 per setting and budget: the mean over families of each family's mean."""
    by_family = defaultdict(list)
    for row in rows:
        by_family[(*_setting(row), row["budget"], row["family"])].append(row["score"])
    table = defaultdict(list)
    for (*setting, budget, _), scores in by_family.items():
        table[(*setting, budget)].append(sum(scores) / len(scores))
    budgets = sorted({key[-1] for key in table})
    lines = [
        "| kernel_size | shift | window | allocation | " + " | ".join(f"budget {b}" for b in budgets) + " | mean |",
        "| --- | --- | --- | --- | " + " | ".join("---" for _ in budgets) + " | --- |",
    ]
    for setting in sorted({key[:-1] for key in table}, key=lambda s: (s[3] != "uniform", s)):
        means = [100 * sum(table[(*setting, b)]) / len(table[(*setting, b)]) for b in budgets]
        cells = " | ".join(f"{m:.1f}" for m in means)
        lines.append("| " + " | ".join(map(str, setting)) + f" | {cells} | {sum(means) / len(means):.1f} |")
    return "\n".join(lines)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _setting(row: dict) -> tuple:
    # Rows written before the sweep covered allocations are uniform, and before it covered shifts, centred.
    return row["kernel_size"], row.get("shift", 0), row["window"], row.get("allocation", "uniform")


def _key(row: dict) -> tuple:
    return row["sample_id"], row["budget"], *_setting(row)


if __name__ == "__main__":
    main()
