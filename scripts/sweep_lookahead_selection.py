"""Chooses, by measurement, how the lookahead scorer turns its scores into a kept set: pooling kernel and recent window.

Every (kernel_size, window) pair compresses the same recorded prefill with the lookahead scorer at each budget
(uniform allocation) and answers greedily; scores are the evaluation suite's. The samples come from the families
the adapter was trained on, with a seed of their own (500): the choice sees neither the held-out families
(`lookahead_cache.training.HELD_OUT_TASKS`) nor the training prompts (seed 1000) nor the samples the results are
reported on (seed 0). Rows append to OUT/sweep.jsonl (resumable); the table of mean scores goes to OUT/summary.md.

Usage:
    python scripts/sweep_lookahead_selection.py --adapter src/lookahead_cache/default_adapter --out runs/sweep \
        [--kernel-sizes 1 5] [--windows 8 32] [--budgets 64 128 256] [--samples 2] [--seed 500]
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lookahead_cache import LookaheadCache
from lookahead_cache.config import DEFAULT_SINK
from lookahead_cache.evaluation.methods import SampleRun
from lookahead_cache.evaluation.metrics import score
from lookahead_cache.evaluation.replay import lookahead_queries, record_prefill
from lookahead_cache.evaluation.suite import DEFAULT_MODEL, build_samples, load_model
from lookahead_cache.scorers.lookahead import LookaheadScorer
from lookahead_cache.training import TRAINING_TASKS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", required=True, help="Lookahead adapter folder (or Hub repo id).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kernel-sizes", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--windows", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--budgets", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--samples", type=int, default=2, help="Samples per training family.")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=500)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "sweep.jsonl"
    done = {_key(row) for row in _rows(path)}
    settings = list(itertools.product(args.kernel_sizes, args.windows))
    model, tokenizer = load_model(DEFAULT_MODEL, args.adapter)
    samples = build_samples(tokenizer, TRAINING_TASKS, (args.length,), args.samples, args.seed)
    with path.open("a") as file, torch.no_grad():
        for sample in tqdm(samples, desc="sweep", unit="sample"):
            todo = [(b, k, w) for b in args.budgets for k, w in settings if (sample.id, b, k, w) not in done]
            if todo:
                for row in _sweep_sample(model, tokenizer, sample, todo):
                    file.write(json.dumps(row) + "\n")
                    file.flush()
    asked = {(sample.id, budget, *setting) for sample in samples for budget in args.budgets for setting in settings}
    summary = _summary([row for row in _rows(path) if _key(row) in asked])
    (args.out / "summary.md").write_text(summary + "\n")
    print(summary)


def _sweep_sample(model, tokenizer, sample, todo):
    context_ids, question_ids = sample.prompt_ids(tokenizer)
    prompt_ids = torch.cat([context_ids, question_ids], dim=-1)
    run = SampleRun(
        model=model,
        prefilled_ids=prompt_ids,
        question_ids=prompt_ids[:, :0],
        recording=record_prefill(model, prompt_ids),
        max_new_tokens=sample.max_new_tokens,
        eos_token_id=model.generation_config.eos_token_id,
    )
    queries = lookahead_queries(model, run.recording.prefills)
    prefills = [replace(prefill, lookahead_queries=q) for prefill, q in zip(run.recording.prefills, queries)]
    for budget in dict.fromkeys(b for b, _, _ in todo):
        settings = [(k, w) for b, k, w in todo if b == budget]
        caches = [
            LookaheadCache.from_prefill(
                prefills, budget=budget, scorer=LookaheadScorer(kernel_size=k), sink=DEFAULT_SINK, window=w
            )
            for k, w in settings
        ]
        for (kernel_size, window), answer_ids in zip(settings, run.answers(caches)):
            prediction = tokenizer.decode(answer_ids[0], skip_special_tokens=True).strip()
            yield {
                "sample_id": sample.id,
                "family": sample.family,
                "budget": budget,
                "kernel_size": kernel_size,
                "window": window,
                "prediction": prediction,
                "score": score(sample.metric, [prediction], [list(sample.answers)])[0],
            }


def _summary(rows: list[dict]) -> str:
    """Mean score x100 per setting and budget: the mean over families of each family's mean."""
    by_family = defaultdict(list)
    for row in rows:
        by_family[(row["kernel_size"], row["window"], row["budget"], row["family"])].append(row["score"])
    table = defaultdict(list)
    for (kernel_size, window, budget, _), scores in by_family.items():
        table[(kernel_size, window, budget)].append(sum(scores) / len(scores))
    budgets = sorted({budget for _, _, budget in table})
    lines = [
        "| kernel_size | window | " + " | ".join(f"budget {b}" for b in budgets) + " | mean |",
        "| --- | --- | " + " | ".join("---" for _ in budgets) + " | --- |",
    ]
    for kernel_size, window in sorted({(k, w) for k, w, _ in table}):
        means = [100 * sum(table[kernel_size, window, b]) / len(table[kernel_size, window, b]) for b in budgets]
        cells = " | ".join(f"{m:.1f}" for m in means)
        lines.append(f"| {kernel_size} | {window} | {cells} | {sum(means) / len(means):.1f} |")
    return "\n".join(lines)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _key(row: dict) -> tuple:
    return row["sample_id"], row["budget"], row["kernel_size"], row["window"]


if __name__ == "__main__":
    main()
