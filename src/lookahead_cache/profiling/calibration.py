"""LU-KV's calibration data, built offline: one long document and about thirty varied questions about it.

The document is running prose from Python's own reference documentation (`pydoc_data`), with a dozen planted
facts; the questions mix retrieving those facts, questions on what the document explains, and instructions
(quote, summarise, list), so that the answers attend to the context in the ways real requests do.
"""

from __future__ import annotations

import hashlib
import random

import torch
from transformers import PreTrainedTokenizerBase

from ..evaluation.documents import haystack_ids
from ..evaluation.tasks.base import chat_prompt

INSTRUCTION = "Read the document below, then follow the request that comes after it."
FACT = "The access code of the {color} {thing} is {code}."
FACT_QUESTION = "What is the access code of the {color} {thing}?"
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "silver", "golden", "black", "white", "pink", "brown")
THINGS = ("door", "box", "gate", "safe", "locker", "drawer", "chest", "vault", "cabinet", "case", "trunk", "crate")
QUESTIONS = (
    "Summarise the document in three sentences.",
    "Which programming language does the document describe?",
    "What does the document say about exceptions?",
    "What does the document say about loops?",
    "What does the document say about classes?",
    "What does the document say about functions and their arguments?",
    "What does the document say about modules and imports?",
    "What does the document say about strings?",
    "List five technical terms that the document defines.",
    "Quote the first sentence of the document.",
    "Quote the last sentence of the document.",
    "Write a question that a student could answer from the document, and answer it.",
    "Explain the main idea of the document to a beginner.",
    "Which access codes does the document mention? List them all.",
    "What is the most surprising statement in the document?",
    "Give a title to the document.",
    "Does the document mention numbers? Give two of them with their context.",
    "Which statements or keywords of the language does the document explain?",
)


def calibration_prompts(
    tokenizer: PreTrainedTokenizerBase,
    context_length: int,
    questions: int | None = None,
    num_facts: int = 12,
    seed: int = 0,
) -> tuple[list[torch.Tensor], str]:
    """`[1, n]` prompt ids, one per question (`num_facts` fact questions and `QUESTIONS`, in a seeded order; the
    first `questions` of them if given), all on one document of about `context_length` tokens, and a sha256 of
    the prompts' ids."""
    if not 1 <= num_facts <= len(COLORS):
        raise ValueError(f"num_facts={num_facts} must be between 1 and {len(COLORS)}.")
    available = num_facts + len(QUESTIONS)
    if questions is not None and not 1 <= questions <= available:
        raise ValueError(f"questions={questions} must be between 1 and the {available} calibration questions.")
    rng = random.Random(seed)
    facts = [
        {"color": color, "thing": thing, "code": rng.randint(100000, 999999)}
        for color, thing in zip(rng.sample(COLORS, num_facts), rng.sample(THINGS, num_facts))
    ]
    planted = sum(len(tokenizer.encode(FACT.format(**fact), add_special_tokens=False)) + 2 for fact in facts)
    # Room for the instruction, the question and the chat template.
    prose = tokenizer.decode(haystack_ids(tokenizer, max(context_length - planted - 160, 256), seed))
    paragraphs = prose.split("\n\n")
    for fact in facts:
        # Between paragraphs, away from the very start and end of the document.
        at = rng.randint(max(1, len(paragraphs) // 10), max(1, len(paragraphs) * 9 // 10))
        paragraphs.insert(at, FACT.format(**fact))
    context = INSTRUCTION + "\n\n" + "\n\n".join(paragraphs)
    asked = [FACT_QUESTION.format(**fact) for fact in facts] + list(QUESTIONS)
    rng.shuffle(asked)  # so that the first few questions are already of every kind
    asked = asked[:questions]
    prompts = []
    digest = hashlib.sha256()
    for question in asked:
        text, _ = chat_prompt(tokenizer, context, question)
        ids = tokenizer.encode(text, add_special_tokens=False)
        digest.update(repr(ids).encode())
        prompts.append(torch.tensor([ids]))
    return prompts, digest.hexdigest()
