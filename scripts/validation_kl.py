"""KL of lookahead adapters on the validation prompts of a training run, per task form: how well each predicts where
the model's own answers look, on prompts of the mix that no adapter trained on (seed 2000).

    python scripts/validation_kl.py --run runs/mix-train --responses results/training_mix/responses.jsonl \
        --adapters src/lookahead_cache/default_adapter runs/mix-train/best_adapter

The run folder must hold its validation prompts' stored keys, values and targets (`lookahead-cache train` stores
them before its first step); each adapter is scored on the same ones, with the loss the training minimises.
"""

from __future__ import annotations

import argparse
import copy
from collections import defaultdict
from pathlib import Path

import torch

from lookahead_cache.adapters import load_lookahead
from lookahead_cache.default_model import load_default_model
from lookahead_cache.evaluation.report.tables import markdown_table
from lookahead_cache.training.config import TrainingConfig
from lookahead_cache.training.data import build_prompts, prepare_examples
from lookahead_cache.training.trainer import CONFIG_NAME, VALIDATION_DIR, attention_modules, example_loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="Run folder of `lookahead-cache train`.")
    parser.add_argument("--responses", type=Path, help="Its responses file, if kept outside the run folder.")
    parser.add_argument("--adapters", nargs="+", required=True, help="Adapter folders to compare.")
    args = parser.parse_args()
    config = TrainingConfig.from_json_file(args.run / CONFIG_NAME)
    model, tokenizer = load_default_model()
    prompts = build_prompts(tokenizer, config, validation=True)
    responses = args.responses or args.run / "responses.jsonl"
    examples = prepare_examples(
        model, tokenizer, config, args.run / VALIDATION_DIR, prompts, responses, disable_progress=True, store=True
    )
    by_form: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for adapter in args.adapters:
        base = copy.deepcopy(model)
        # Found before PEFT wraps the model, as training does: the same modules, under the adapter's LoRA.
        modules = attention_modules(base)
        peft_model = load_lookahead(base, adapter, tokenizer=tokenizer).eval()
        with torch.no_grad():
            for example in examples:
                form = example.sample_id.split("/")[0]
                by_form[form][adapter].append(float(example_loss(peft_model, example, modules)))
    rows = []
    for form, losses in by_form.items():
        rows.append([f"`{form}`", *(f"{sum(losses[a]) / len(losses[a]):.4f}" for a in args.adapters)])
    means = [sum(sum(losses[a]) / len(losses[a]) for losses in by_form.values()) / len(by_form) for a in args.adapters]
    rows.append([f"**mean over {len(by_form)} forms**", *(f"**{mean:.4f}**" for mean in means)])
    print(f"KL(target || lookahead) on {len(examples)} validation prompts (seed {config.validation_seed})\n")
    print(markdown_table(["form", *args.adapters], rows))


if __name__ == "__main__":
    main()
