"""Settings of a lookahead training run, saved as `training_config.json` in its output folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

# Families the shipped adapter never sees, so the evaluation can show generalisation to unseen task kinds:
# multi-key and multi-value retrieval, and frequent-words aggregation.
HELD_OUT_TASKS = ("niah_multikey", "niah_multivalue", "frequent_words")
TRAINING_TASKS = (
    "niah_single_noise",
    "niah_single_essay",
    "niah_single_uuid",
    "niah_multiquery",
    "variable_tracking",
    "common_words",
    "doc_qa",
    "code_continuation",
    "few_shot_classification",
    "summary",
)
# Seeds of training prompts start here; evaluation uses seed 0, so no prompt is shared with it.
TRAINING_SEED = 1000
# Validation prompts: the training families, drawn apart from training (1000), evaluation (0) and selection (500).
VALIDATION_SEED = 2000


@dataclass
class TrainingConfig:
    """What `lookahead-cache train` does.

    Attributes:
        tasks: Task families of the training mix (built offline by `lookahead_cache.evaluation.tasks`).
        lengths: Prompt lengths in tokens; training at short lengths transfers to longer prompts.
        samples_per_task: Prompts per family and length.
        seed: Seed of the prompts (evaluation uses 0).
        response_tokens: Greedy response tokens of the frozen model whose attention is the target.
        epochs: Passes over the prompts.
        learning_rate: Peak Adam learning rate (linear warm-up, then cosine decay to 10 %).
        warmup_steps: Optimizer steps of linear warm-up.
        gradient_accumulation: Prompts per optimizer step (one prompt per forward).
        weight_decay: AdamW weight decay.
        max_grad_norm: Gradient clipping.
        save_every: Checkpoint every this many optimizer steps (and at the end).
        num_tokens, lora_rank, lora_alpha: The lookahead modules (see `LookaheadConfig`).
        validation_samples_per_task: Validation prompts per family and length (0: no validation), drawn with
            `validation_seed`; their KL is logged at every checkpoint.
        validation_seed: Seed of the validation prompts; must differ from `seed`.
        store_prompt_kv: Store each prompt's keys and values with its target, so that training steps skip the
            prompt's forward (about 5x faster steps, at the disk cost given in `lookahead_cache.training.data`).
    """

    tasks: list[str] = field(default_factory=lambda: list(TRAINING_TASKS))
    lengths: list[int] = field(default_factory=lambda: [768, 1024, 1536])
    samples_per_task: int = 10
    seed: int = TRAINING_SEED
    response_tokens: int = 48
    epochs: int = 2
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    gradient_accumulation: int = 4
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    save_every: int = 25
    num_tokens: int = 32
    lora_rank: int = 8
    lora_alpha: int = 32
    validation_samples_per_task: int = 0
    validation_seed: int = VALIDATION_SEED
    store_prompt_kv: bool = True

    def __post_init__(self):
        for name in ("samples_per_task", "response_tokens", "epochs", "gradient_accumulation", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1.")
        if not self.tasks or not self.lengths:
            raise ValueError("tasks and lengths must each name at least one entry.")
        if self.validation_samples_per_task < 0:
            raise ValueError(f"validation_samples_per_task={self.validation_samples_per_task} must not be negative.")
        if self.validation_samples_per_task and self.validation_seed == self.seed:
            raise ValueError(
                f"validation_seed equals seed ({self.seed}): validation would repeat the training prompts; pick another."
            )
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive.")

    def to_json_file(self, path: Path) -> None:
        # Imported here: the command line reads this module for its defaults without importing torch.
        from ..run_folder import write_text

        write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def from_json_file(cls, path: Path) -> TrainingConfig:
        from ..run_folder import read_json

        data = read_json(path)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"{path} has unknown training settings {unknown}.")
        return cls(**data)
