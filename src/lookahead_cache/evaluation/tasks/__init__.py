"""Offline long-context task families: RULER-style synthetic tasks and real-text tasks built from Python's own
documentation and sources. One file each, registered by name; `get_task(name).build(tokenizer, length, n)` gives
:class:`Sample` objects whose `prompt_ids` split the chat prompt into context and question."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...registry import Registry, lazy_attributes

if TYPE_CHECKING:
    from .base import TaskFamily

TASKS = Registry(
    __name__,
    {
        "niah_single_noise": ".niah_single_noise:NiahSingleNoise",
        "niah_single_essay": ".niah_single_essay:NiahSingleEssay",
        "niah_single_uuid": ".niah_single_uuid:NiahSingleUuid",
        "niah_multikey": ".niah_multikey:NiahMultikey",
        "niah_multivalue": ".niah_multivalue:NiahMultivalue",
        "niah_multiquery": ".niah_multiquery:NiahMultiquery",
        "variable_tracking": ".variable_tracking:VariableTracking",
        "common_words": ".common_words:CommonWords",
        "frequent_words": ".frequent_words:FrequentWords",
        "doc_qa": ".doc_qa:DocQA",
        "code_continuation": ".code_continuation:CodeContinuation",
        "code_continuation_long": ".code_continuation_long:CodeContinuationLong",
        "few_shot_classification": ".few_shot_classification:FewShotClassification",
        "summary": ".summary:Summary",
    },
)
__getattr__ = lazy_attributes(
    __name__, {**dict.fromkeys(("Draft", "Sample", "Slot", "TaskFamily"), ".base"), **TASKS.modules_by_class()}
)


# Families of the evaluation suite that no training prompt's generator shares, so that the evaluation shows how the
# scorer does on task forms it never saw: every needle-in-a-haystack family (they share one generator) and
# frequent-words aggregation.
HELD_OUT_TASKS = (
    "niah_single_noise",
    "niah_single_essay",
    "niah_single_uuid",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "frequent_words",
)
# The suite's other families, which the training mix uses beside its own forms (`lookahead_cache.training.forms`).
TRAINING_TASKS = (
    "variable_tracking",
    "common_words",
    "doc_qa",
    "code_continuation",
    "few_shot_classification",
    "summary",
)
# The suite's families by whether the training mix uses them: evaluation reports a macro average over each.
SUITE_SPLIT = {"held out": HELD_OUT_TASKS, "training": TRAINING_TASKS}
# Families outside the suite, run when named (`lookahead-cache eval --tasks`): the long answers of the long-output
# mode.
EXTRA_TASKS = ("code_continuation_long",)
# What `lookahead-cache eval` runs unless told otherwise: every family but the extra ones, in registry order.
SUITE_TASKS = tuple(name for name in TASKS if name not in EXTRA_TASKS)


def score_predictions(family: str, metric: str, predictions: list[str], references: list[list[str]]) -> list[float]:
    """Per-sample scores of rows of `family` scored with `metric`: the family's own scoring (`TaskFamily.score`)
    when it is a suite family of that metric, the metric's otherwise (training forms, rows of other runners)."""
    if family in TASKS and TASKS[family].metric == metric:
        return TASKS[family]().score(predictions, references)
    from ..metrics import score

    return score(metric, predictions, references)


def get_task(name: str) -> TaskFamily:
    """The suite's task family registered as `name` (`lookahead_cache.training.forms.get_task` also knows the forms
    of the training mix)."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}. Suite families: {', '.join(TASKS)}.")
    return TASKS[name]()


__all__ = [
    "TASKS",
    "Draft",
    "EXTRA_TASKS",
    "Sample",
    "Slot",
    "TaskFamily",
    "HELD_OUT_TASKS",
    "SUITE_SPLIT",
    "SUITE_TASKS",
    "TRAINING_TASKS",
    "get_task",
    "score_predictions",
    *TASKS.modules_by_class(),
]
