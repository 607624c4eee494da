"""Live runs: each method and budget reads the prompt with `generate` on the model, into a fresh cache.

The one-shot modes replay one recorded prefill for every method (`replay`, `SampleRun`). Two capabilities of
`LookaheadCache` evict inside forwards that a recording of the whole prompt cannot stand for, so their modes run
every (method, budget) live instead, with the method's fresh cache (`methods.live_cache`):

- streaming prefill (`chunked-question-aware`, `chunked-question-agnostic`): `generate(..., prefill_chunk_size=C)`
  reads the prompt (question-agnostic: the context; the question then follows as a later forward, appended whole)
  in chunks of C tokens and the cache evicts after every chunk; question-aware, the cache is told the question that
  ends the prompt (`LookaheadCache.set_question`, for the lookahead scorer: every chunk's rows follow it; the
  heuristic scorers score each chunk with its own last queries), as a one-shot prefill's eviction sees it;
- sessions (`session`): a chat of three turns (`Sample.session_ids`), each a forward continuing the same cache;
  only the first evicts by default, every one with a session budget (`<method>@session`, `evict_every_prefill=True`);
- long answers (`long-output`): the question-aware prompt read in one forward, then the family's long answer; the
  cache keeps every generated token by default, and evicts them while it decodes with a generation budget
  (`<method>@decode`, `generation_budget=G`), which no recorded prefill's replay stands for either.

Then the answer is decoded greedily from the cache, as the one-shot modes decode theirs (`methods.greedy_answers`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from ..cache import LookaheadCache
from ..commands.eval import CHUNKED_MODES, LONG_OUTPUT_MODE, SESSION_MODE
from .methods import answers_after, greedy_answers
from .tasks import Sample
from .timing import kv_nbytes, stored_prompt_tokens

LIVE_MODES = (*CHUNKED_MODES, SESSION_MODE, LONG_OUTPUT_MODE)


@dataclass
class LiveAnswer:
    """What a live run gives, its cache measured once the prompt was read, before the answer's decoding.

    Attributes:
        answer_ids: `[1, k]` greedy answer tokens.
        prefill_s: Wall time of the forwards that read the prompt, evictions included.
        kept_tokens: Tokens the cache stores per layer and KV head, on average.
        kv_bytes: Bytes of its keys and values.
        peak_kv_bytes: The most bytes its keys and values took while the prompt was read: during every chunk of a
            chunked prefill; from the second turn on in a session (the first turn is an ordinary prefill).
        kept_after_answer: Tokens the cache stores per layer and KV head, on average, once the answer was decoded
            (the answer's last token, never fed, not among them).
    """

    answer_ids: torch.Tensor
    prefill_s: float
    kept_tokens: float
    kv_bytes: int
    peak_kv_bytes: int
    kept_after_answer: float


@dataclass
class LiveRun:
    """One sample's prompt as a live mode reads it, shared by every method run on it.

    Attributes:
        model: The causal LM.
        turns: `[1, n]` token ids, each fed as one forward continuing the cache: the prompt (chunked,
            question-aware), the context (chunked, question-agnostic), or the session's three turns.
        question_ids: `[1, m]` tokens fed with the answer's decoding, after the turns (question-agnostic, as
            `SampleRun.answers` feeds them); empty otherwise, the first answer token then coming from the last turn.
        max_new_tokens: Answer length limit.
        eos_token_id: End-of-sequence token id(s).
        chunk_size: `prefill_chunk_size` of the first turn's `generate`; None reads it in one forward.
        chunked_question: The question that ends a chunked question-aware prompt, told to a cache whose scorer takes
            one (`LookaheadCache.set_question`) before it reads the prompt; None otherwise.
    """

    model: PreTrainedModel
    turns: list[torch.Tensor]
    question_ids: torch.Tensor
    max_new_tokens: int
    eos_token_id: int | list[int] | None
    chunk_size: int | None = None
    chunked_question: torch.Tensor | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(turn.shape[-1] for turn in self.turns) + self.question_ids.shape[-1]

    @property
    def longest_later_turn(self) -> int:
        """Tokens of the longest turn after the first (0 for one turn)."""
        return max((turn.shape[-1] for turn in self.turns[1:]), default=0)

    @torch.no_grad()
    def answer(self, cache: Cache) -> LiveAnswer:
        """Read the turns into `cache` (empty), then decode the answer greedily."""
        seen = self.turns[0][:, :0]
        if self.chunked_question is not None and isinstance(cache, LookaheadCache) and cache.scorer.needs_lookahead:
            cache.set_question(self.chunked_question)
        start = time.perf_counter()
        for index, turn in enumerate(self.turns):
            chunking = {"prefill_chunk_size": self.chunk_size} if index == 0 and self.chunk_size else {}
            # A forward of the turn's tokens through the cache; the token it gives begins the answer after the last.
            (first,) = greedy_answers(self.model, [cache], seen, turn, 1, self.eos_token_id, **chunking)
            seen = torch.cat([seen, turn], dim=-1)
            if index == 0 and len(self.turns) > 1 and isinstance(cache, LookaheadCache):
                cache.reset_peak()  # the later turns' peak from here
        prefill_s = time.perf_counter() - start
        # A DynamicCache only grows, and a LookaheadCache counts its peak during the prefills that it evicts; turns
        # appended whole grow it after its last eviction.
        peak_kv_bytes = max(getattr(cache, "peak_nbytes", 0), kv_nbytes(cache))
        kept_tokens, kv_bytes = stored_prompt_tokens(cache), kv_nbytes(cache)
        if self.question_ids.shape[-1]:
            answer_ids = greedy_answers(
                self.model, [cache], seen, self.question_ids, self.max_new_tokens, self.eos_token_id
            )[0]
        else:
            answer_ids = answers_after(self.model, [cache], seen, first, self.max_new_tokens, self.eos_token_id)[0]
        return LiveAnswer(answer_ids, prefill_s, kept_tokens, kv_bytes, peak_kv_bytes, stored_prompt_tokens(cache))


def start_live_run(model: PreTrainedModel, tokenizer, sample: Sample, mode: str, chunk_size: int | None) -> LiveRun:
    """The live run of `sample` in live `mode`; `chunk_size` is the chunked modes' `prefill_chunk_size` (the
    long-output mode reads its question-aware prompt in one forward)."""
    common = dict(model=model, max_new_tokens=sample.max_new_tokens, eos_token_id=model.generation_config.eos_token_id)
    if mode == SESSION_MODE:
        turns = sample.session_ids(tokenizer)
        return LiveRun(turns=turns, question_ids=turns[0][:, :0], **common)
    if mode not in (*CHUNKED_MODES, LONG_OUTPUT_MODE):
        raise ValueError(f"{mode!r} is not a live mode; live modes: {', '.join(LIVE_MODES)}.")
    context_ids, question_ids = sample.prompt_ids(tokenizer)
    if mode == LONG_OUTPUT_MODE:
        prompt_ids = torch.cat([context_ids, question_ids], dim=-1)
        return LiveRun(turns=[prompt_ids], question_ids=question_ids[:, :0], **common)
    if CHUNKED_MODES[mode] == "question-aware":
        prompt_ids = torch.cat([context_ids, question_ids], dim=-1)
        return LiveRun(
            turns=[prompt_ids],
            question_ids=question_ids[:, :0],
            chunk_size=chunk_size,
            chunked_question=question_ids,
            **common,
        )
    return LiveRun(turns=[context_ids], question_ids=question_ids, chunk_size=chunk_size, **common)
