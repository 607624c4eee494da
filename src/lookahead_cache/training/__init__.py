"""Training lookahead modules: offline prompts, the frozen model's own responses as targets, KL loss.

Names are imported on first use: the command line reads `TrainingConfig`'s defaults without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import lazy_attributes

_EXPORTS = {
    "HELD_OUT_TASKS": "..evaluation.tasks",
    "TRAINING_TASKS": "..evaluation.tasks",
    "TrainingConfig": ".config",
    "TrainingExample": ".data",
    "build_prompts": ".data",
    "prepare_examples": ".data",
    "kl_loss": ".trainer",
    "train": ".trainer",
}

if TYPE_CHECKING:  # for type checkers and IDEs; at run time `__getattr__` imports these on first use
    from ..evaluation.tasks import HELD_OUT_TASKS, TRAINING_TASKS
    from .config import TrainingConfig
    from .data import TrainingExample, build_prompts, prepare_examples
    from .trainer import kl_loss, train

__getattr__ = lazy_attributes(__name__, _EXPORTS)

__all__ = [
    "HELD_OUT_TASKS",
    "TRAINING_TASKS",
    "TrainingConfig",
    "TrainingExample",
    "build_prompts",
    "kl_loss",
    "prepare_examples",
    "train",
]
