"""Settings of a lookahead training run, saved as `training_config.json` in its output folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..evaluation.tasks import TRAINING_TASKS
from .forms import FORMS

# Default validation prompts stop at this length: longer ones would cost more at every checkpoint than they tell.
MAX_VALIDATION_LENGTH = 4096
TRAINING_FORMS = tuple(FORMS)
# Seeds of training prompts start here; evaluation uses seed 0, so no prompt is shared with it.
TRAINING_SEED = 1000
# Validation prompts: the training families, drawn apart from training (1000), evaluation (0) and selection (500).
VALIDATION_SEED = 2000


@dataclass
class TrainingConfig:
    """What `lookahead-cache train` does.

    Attributes:
        tasks: Task forms of the training mix: forms of `lookahead_cache.training.forms` and families of the
            evaluation suite (`lookahead_cache.evaluation.tasks`), all built offline. May be empty when `data_files`
            gives the prompts.
        data_files: JSONL files of the user's own prompts (see `lookahead_cache.training.user_data`), trained on
            beside the prompts of `tasks`.
        validation_fraction: Share of the `data_files` prompts held out for validation (see `UserData.split`).
        lengths: Prompt lengths in tokens.
        samples_per_task: Prompts per form at each of `lengths` (one count per length, or one for all).
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
        validation_samples_per_task: Validation prompts per form at each of `lengths` (one count per length, or one
            for all; 0: no validation), drawn with `validation_seed`; their KL is logged at every checkpoint.
            Default: one at each length up to `MAX_VALIDATION_LENGTH`.
        validation_seed: Seed of the validation prompts; must differ from `seed`.
        store_prompt_kv: Store each prompt's keys and values with its target, so that training steps skip the
            prompt's forward (about 5x faster steps, at the disk cost given in `lookahead_cache.training.data`: about
            45 KiB per SmolLM2 prompt token, 110 GB for the default mix, so it is off by default).
    """

    tasks: list[str] = field(default_factory=lambda: [*TRAINING_FORMS, *TRAINING_TASKS])
    data_files: list[str] = field(default_factory=list)
    validation_fraction: float = 0.1
    lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096, 8192])
    # Most prompts short, where a CPU makes responses quickly, and some at every length up to 8k.
    samples_per_task: int | list[int] = field(default_factory=lambda: [40, 40, 15, 3, 2])
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
    validation_samples_per_task: int | list[int] | None = None
    validation_seed: int = VALIDATION_SEED
    store_prompt_kv: bool = False

    def __post_init__(self):
        for name in ("response_tokens", "epochs", "gradient_accumulation", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1.")
        if not self.tasks and not self.data_files:
            raise ValueError("Name at least one task form (tasks) or data file (data_files) to train on.")
        if not self.lengths:
            raise ValueError("lengths must name at least one prompt length.")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction={self.validation_fraction} must be at least 0 and below 1.")
        if self.validation_samples_per_task is None:
            self.validation_samples_per_task = [int(length <= MAX_VALIDATION_LENGTH) for length in self.lengths]
        self.samples_per_task = self._per_length("samples_per_task")
        self.validation_samples_per_task = self._per_length("validation_samples_per_task")
        if self.tasks and not any(self.samples_per_task):
            raise ValueError(f"samples_per_task={self.samples_per_task} must ask for at least one prompt.")
        if self.tasks and any(self.validation_samples_per_task) and self.validation_seed == self.seed:
            raise ValueError(
                f"validation_seed equals seed ({self.seed}): validation would repeat the training prompts; pick "
                "another."
            )
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive.")

    def _per_length(self, name: str) -> list[int]:
        counts = getattr(self, name)
        counts = [counts] * len(self.lengths) if isinstance(counts, int) else list(counts)
        if len(counts) != len(self.lengths) or any(not isinstance(c, int) or c < 0 for c in counts):
            raise ValueError(
                f"{name}={getattr(self, name)} must be one count of prompts, or one per length ({len(self.lengths)} "
                f"for lengths {self.lengths}), none negative."
            )
        return counts

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
