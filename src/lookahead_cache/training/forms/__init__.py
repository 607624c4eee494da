"""Task forms of the training mix that the evaluation suite does not use.

Each is a :class:`~lookahead_cache.evaluation.tasks.TaskFamily` (one file, one registry line), built offline from
Python's own documentation and sources or from seeded generated records, logs, configs and chats, so that the
mix never needs a network. None of them shares a generator with the suite's held-out families
(`lookahead_cache.training.config.HELD_OUT_TASKS`).
"""

from __future__ import annotations

from ...registry import Registry

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
