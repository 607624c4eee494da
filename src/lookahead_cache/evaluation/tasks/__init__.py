"""Offline long-context task families: RULER-style synthetic tasks and real-text tasks built from Python's own
documentation and sources. One file each, registered by name; `get_task(name).build(tokenizer, length, n)` gives
:class:`Sample` objects whose `prompt_ids` split the chat prompt into context and question."""

from __future__ import annotations

from .base import Draft, Sample, Slot, TaskFamily
from .code_continuation import CodeContinuation
from .common_words import CommonWords
from .doc_qa import DocQA
from .few_shot_classification import FewShotClassification
from .frequent_words import FrequentWords
from .niah_multikey import NiahMultikey
from .niah_multiquery import NiahMultiquery
from .niah_multivalue import NiahMultivalue
from .niah_single_essay import NiahSingleEssay
from .niah_single_noise import NiahSingleNoise
from .niah_single_uuid import NiahSingleUuid
from .summary import Summary
from .variable_tracking import VariableTracking

TASKS: dict[str, type[TaskFamily]] = {
    family.name: family
    for family in (
        NiahSingleNoise,
        NiahSingleEssay,
        NiahSingleUuid,
        NiahMultikey,
        NiahMultivalue,
        NiahMultiquery,
        VariableTracking,
        CommonWords,
        FrequentWords,
        DocQA,
        CodeContinuation,
        FewShotClassification,
        Summary,
    )
}


def get_task(name: str) -> TaskFamily:
    """The task family registered as `name`."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}. Available tasks: {', '.join(TASKS)}.")
    return TASKS[name]()


__all__ = [
    "TASKS",
    "Draft",
    "Sample",
    "Slot",
    "TaskFamily",
    "get_task",
    *(family.__name__ for family in TASKS.values()),
]
