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
        "few_shot_classification": ".few_shot_classification:FewShotClassification",
        "summary": ".summary:Summary",
    },
)
__getattr__ = lazy_attributes(
    __name__, {**dict.fromkeys(("Draft", "Sample", "Slot", "TaskFamily"), ".base"), **TASKS.modules_by_class()}
)


def get_task(name: str) -> TaskFamily:
    """The task family registered as `name`: a family of the suite, or a form of the training mix
    (`lookahead_cache.training.forms`), which evaluation can score as well, e.g. on prompts of the validation seed."""
    from ...training.forms import FORMS

    for registry in (TASKS, FORMS):
        if name in registry:
            return registry[name]()
    raise ValueError(f"Unknown task {name!r}. Suite families: {', '.join(TASKS)}; training forms: {', '.join(FORMS)}.")


__all__ = [
    "TASKS",
    "Draft",
    "Sample",
    "Slot",
    "TaskFamily",
    "get_task",
    *TASKS.modules_by_class(),
]
