"""The training mix as a table: each form with its description, prompts per length, and how many of them a responses
file answers so far (training and validation seeds apart).

    python scripts/training_mix.py --responses results/training_mix/responses.jsonl

Counts come from `TrainingConfig()` (the default mix) and the responses file's prompt keys; nothing is built or run.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from lookahead_cache.evaluation.report.tables import markdown_table
from lookahead_cache.run_folder import read_jsonl
from lookahead_cache.training.config import TrainingConfig
from lookahead_cache.training.forms import FORMS, get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--responses", type=Path, required=True, help="A responses file of `lookahead-cache train`.")
    args = parser.parse_args()
    config = TrainingConfig()
    answered = Counter()
    for row in read_jsonl(args.responses):
        sample_id, seed = row["key"].rsplit("@", 1)
        form, length, _ = sample_id.split("/")
        answered[form, int(length), int(seed)] += 1
    header = ["form", "source", *(f"{length}" for length in config.lengths), "validation", "description"]
    rows = []
    totals = Counter()
    for form in config.tasks:
        cells = [f"`{form}`", "training form" if form in FORMS else "suite family"]
        for length, count in zip(config.lengths, config.samples_per_task):
            done = answered[form, length, config.seed]
            cells.append(f"{done}/{count}")
            totals["training", length] += count
            totals["training answered", length] += done
        validation = sum(config.validation_samples_per_task)
        validation_done = sum(answered[form, length, config.validation_seed] for length in config.lengths)
        totals["validation"] += validation
        totals["validation answered"] += validation_done
        cells += [f"{validation_done}/{validation}", get_task(form).description.replace("|", "\\|")]
        rows.append(cells)
    rows.append(
        [
            f"**{len(config.tasks)} forms**",
            "",
            *(f"{totals['training answered', length]}/{totals['training', length]}" for length in config.lengths),
            f"{totals['validation answered']}/{totals['validation']}",
            "",
        ]
    )
    prompts = sum(totals["training", length] for length in config.lengths)
    done = sum(totals["training answered", length] for length in config.lengths)
    tokens = sum(length * count for length, count in zip(config.lengths, config.samples_per_task)) * len(config.tasks)
    print(
        f"Training prompts answered: {done} of {prompts} (seed {config.seed}; about {tokens / 1e6:.2f}M prompt "
        f"tokens in all), validation {totals['validation answered']} of {totals['validation']} (seed "
        f"{config.validation_seed}). Columns: answered/planned prompts per form at each length.\n"
    )
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
