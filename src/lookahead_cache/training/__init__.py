"""Training lookahead modules: offline prompts, the frozen model's own responses as targets, KL loss."""

from .config import HELD_OUT_TASKS, TRAINING_TASKS, TrainingConfig
from .data import TrainingExample, build_prompts, prepare_examples
from .trainer import kl_loss, train

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
