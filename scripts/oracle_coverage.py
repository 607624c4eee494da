"""How much of the oracle's kept attention each scorer keeps, on held-out and on training families.

For each prompt, the oracle's scores are the attention the full-cache greedy answer pays to the prompt, per layer
and KV head (the training target). A scorer keeps its top `budget` prompt tokens per layer and KV head; its coverage
is the oracle attention mass on those tokens divided by the mass on the oracle's own top `budget`, averaged over
layers, heads and prompts (1.0: it keeps what the answer reads as well as the oracle does). Raw lookahead scores,
the lookahead scorer as configured (pooled) and snapkv are compared. Separates "the adapter's scores do not
generalise" from "generalising scores still miss the few tokens an answer needs".

Usage:
    python scripts/oracle_coverage.py --out results/oracle_coverage [--samples 3] [--budget 128]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lookahead_cache.evaluation.replay import lookahead_queries
from lookahead_cache.evaluation.suite import DEFAULT_MODEL, build_samples
from lookahead_cache.model_loading import load_model
from lookahead_cache.scorers import get_scorer
from lookahead_cache.scorers.lookahead import LookaheadScorer
from lookahead_cache.training import HELD_OUT_TASKS, TRAINING_TASKS
from lookahead_cache.training.data import response_and_target

SCORERS = {
    "lookahead (raw)": lambda: LookaheadScorer(kernel_size=1),
    "lookahead": LookaheadScorer,
    "snapkv": lambda: get_scorer("snapkv"),
}


def coverage(target: torch.Tensor, scores: torch.Tensor, budget: int) -> float:
    """Mean over heads of the target mass on the top-`budget` of `scores`, over the target's own best mass."""
    best = target.topk(budget, -1).values.sum(-1)
    kept = target.gather(-1, scores.topk(budget, -1).indices).sum(-1)
    return (kept / best).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default=DEFAULT_MODEL, help="Lookahead adapter (default: the shipped one).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=3, help="Samples per family.")
    parser.add_argument("--budget", type=int, default=128)
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--response-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model, tokenizer = load_model(DEFAULT_MODEL, adapter=args.adapter)
    tasks = [*HELD_OUT_TASKS, *TRAINING_TASKS]
    samples = build_samples(tokenizer, tasks, (args.length,), args.samples, args.seed)
    rows = []
    with torch.no_grad():
        for sample in tqdm(samples, desc="coverage", unit="prompt"):
            context, question = sample.prompt_ids(tokenizer)
            input_ids = torch.cat([context, question], dim=-1).to(model.device)
            recording, _, target = response_and_target(model, input_ids, args.response_tokens)
            queries = lookahead_queries(model, recording.prefills)
            prefills = [replace(prefill, lookahead_queries=q) for prefill, q in zip(recording.prefills, queries)]
            row = {"sample_id": sample.id, "family": sample.family, "held_out": sample.family in HELD_OUT_TASKS}
            for name, make in SCORERS.items():
                scorer = make()
                row[name] = sum(
                    coverage(layer_target, scorer.score(prefill)[0], args.budget)
                    for layer_target, prefill in zip(target, prefills)
                ) / len(prefills)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "coverage.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    groups = defaultdict(list)
    for row in rows:
        groups["held-out families" if row["held_out"] else "training families"].append(row)
    lines = [
        (
            f"Oracle coverage at budget {args.budget} ({args.length}-token prompts, {args.samples} per family, "
            f"seed {args.seed}): `python scripts/oracle_coverage.py --out {args.out} --samples {args.samples} "
            f"--budget {args.budget}`"
        ),
        "",
        "| families | prompts | " + " | ".join(SCORERS) + " |",
        "| --- | --- | " + " | ".join("---" for _ in SCORERS) + " |",
    ]
    for group, members in sorted(groups.items()):
        means = [sum(row[name] for row in members) / len(members) for name in SCORERS]
        lines.append(f"| {group} | {len(members)} | " + " | ".join(f"{mean:.3f}" for mean in means) + " |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
