"""Task forms of the training mix that the evaluation suite does not use.

Each is a :class:`~lookahead_cache.evaluation.tasks.TaskFamily` (one file, one registry line), built offline from
Python's own documentation and sources or from seeded generated records, logs, configs and chats, so that the
mix never needs a network. None of them shares a generator with the suite's held-out families
(`lookahead_cache.evaluation.tasks.HELD_OUT_TASKS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...evaluation import tasks
from ...registry import Registry

if TYPE_CHECKING:
    from ...evaluation.tasks import TaskFamily

FORMS = Registry(
    __name__,
    {
        # Records, logs and configs, generated from a seed.
        "record_lookup": ".record_lookup:RecordLookup",
        "config_lookup": ".config_lookup:ConfigLookup",
        "log_search": ".log_search:LogSearch",
        "record_count": ".record_count:RecordCount",
        "table_aggregate": ".table_aggregate:TableAggregate",
        # Reasoning over facts spread through prose, and conversations.
        "multi_hop_facts": ".multi_hop_facts:MultiHopFacts",
        "math_in_context": ".math_in_context:MathInContext",
        "conversation_recall": ".conversation_recall:ConversationRecall",
        "timeline_order": ".timeline_order:TimelineOrder",
        "passage_retrieval": ".passage_retrieval:PassageRetrieval",
        # Code and documentation of the standard library.
        "code_qa": ".code_qa:CodeQA",
        "signature_completion": ".signature_completion:SignatureCompletion",
        "section_quote": ".section_quote:SectionQuote",
        "section_summary": ".section_summary:SectionSummary",
    },
)


def get_task(name: str) -> TaskFamily:
    """The task family registered as `name`: a form of the training mix, or a family of the evaluation suite (the
    mix uses some; evaluation can score forms too, e.g. on prompts of the validation seed)."""
    if name in FORMS:
        return FORMS[name]()
    if name in tasks.TASKS:
        return tasks.get_task(name)
    raise ValueError(
        f"Unknown task {name!r}. Suite families: {', '.join(tasks.TASKS)}; training forms: {', '.join(FORMS)}."
    )
