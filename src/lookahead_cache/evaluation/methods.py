"""The methods an evaluation compares, each building its cache from one recorded prefill.

A method is a callable `(SampleRun, budget) -> Cache`, registered by name in `METHODS`; adding one is one function
(or one `CacheMethod(scorer, allocation)`) and one line. Names combine a scorer and an allocation: `adakv` and
`lukv` are SnapKV with AdaKV's and LU-KV's allocations, `lookahead-adakv` and `lookahead-lukv` the lookahead scorer
with them (LU-KV reads the profiles shipped beside the lookahead adapter). Heuristic methods only score the recorded
layers; `oracle` and `laq` first obtain the queries of future tokens (the full-cache answer, or a drafted one) and
score with those; `lookahead` runs the model's learned lookahead tokens after the recorded prompt.

This module is the one vocabulary of methods: `FULL` (the uncompressed reference), the method names of
`lookahead-cache eval` (`METHODS`, `get_method`, `needs_adapter`), and the cache configurations of
`lookahead-cache bench`, written `scorer` or `scorer+allocation` (`cache_configuration`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from ..allocation.lukv import adapter_profile
from ..cache import LookaheadCache
from ..prefill import CACHE_ARGUMENT, LayerPrefill
from ..scorers import SCORERS
from ..scorers.future_queries import FutureQueriesScorer
from .replay import PrefillRecording, dynamic_cache_from, future_queries, lookahead_queries

# The uncompressed cache: the reference every method and configuration is compared with.
FULL = "full"
# LAQ drafts this many pseudo tokens with a SnapKV-compressed cache before scoring with their queries.
LAQ_DRAFT_TOKENS = 32


@dataclass
class SampleRun:
    """One prompt of an evaluation in one mode, shared by every method run on it.

    Attributes:
        model: The causal LM.
        prefilled_ids: `[1, n]` tokens the recorded prefill read: context and question when question-aware, the
            context alone when question-agnostic.
        question_ids: `[1, m]` question tokens, fed after eviction when question-agnostic; empty when aware.
        recording: The recorded prefill of `prefilled_ids`.
        max_new_tokens: Answer length limit.
        eos_token_id: End-of-sequence token id(s).
        full_answer_ids: `[1, k]` answer of the full cache, set once the `full` method ran (the oracle needs it).
    """

    model: PreTrainedModel
    prefilled_ids: torch.Tensor
    question_ids: torch.Tensor
    recording: PrefillRecording
    max_new_tokens: int
    eos_token_id: int | list[int] | None
    full_answer_ids: torch.Tensor | None = None
    _lookahead_prefills: list[LayerPrefill] | None = field(default=None, init=False, repr=False)

    @property
    def question_aware(self) -> bool:
        return self.question_ids.shape[-1] == 0

    def answer(self, cache: Cache, max_new_tokens: int | None = None) -> torch.Tensor:
        """`[1, k]` greedy answer tokens, continuing `cache`, which holds the prefilled tokens."""
        return self.answers([cache], max_new_tokens)[0]

    @torch.no_grad()
    def answers(self, caches: list[Cache], max_new_tokens: int | None = None) -> list[torch.Tensor]:
        """Per cache, the `[1, k]` greedy answer tokens continuing it; several LookaheadCaches decode as one batch.

        Decoding a small model on a CPU is bound by reading its weights, so one batch of every method's cache
        costs little more than one of them. Question-aware, the first answer token comes from the recorded
        logits: eviction happens after each layer's attention ran on the full prompt, so that token is the same
        for every method.
        """
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        rows = len(caches)
        if self.question_aware:
            first = self.recording.next_token_logits.argmax(-1, keepdim=True)
            if limit == 1 or _is_eos(int(first), self.eos_token_id):
                return [first] * rows
            fed, prefix, limit = first, first, limit - 1
        else:
            fed, prefix = self.question_ids, self.question_ids[:, :0]
        input_ids = torch.cat([self.prefilled_ids, fed], dim=-1).expand(rows, -1)
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            **{CACHE_ARGUMENT: caches[0] if rows == 1 else LookaheadCache.stack(caches)},
            max_new_tokens=limit,
            do_sample=False,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.model.generation_config.pad_token_id,
        )
        return [
            torch.cat([prefix, _until_eos(row[input_ids.shape[-1] :], self.eos_token_id)[None]], dim=-1)
            for row in output
        ]

    @torch.no_grad()
    def lookahead_prefills(self) -> list[LayerPrefill]:
        """The recorded prefills with the queries of the model's lookahead tokens run after the prompt.

        Computed on first use and kept: every method and budget scoring with lookahead tokens reads the same queries.
        """
        if self._lookahead_prefills is None:
            queries = lookahead_queries(self.model, self.recording.prefills)
            self._lookahead_prefills = [
                replace(prefill, lookahead_queries=q) for prefill, q in zip(self.recording.prefills, queries)
            ]
        return self._lookahead_prefills

    def future_scorer(self, answer_ids: torch.Tensor) -> FutureQueriesScorer:
        """Scores by the queries of what follows the prefill: the question (if agnostic), then `answer_ids`."""
        future = torch.cat([self.question_ids, answer_ids], dim=-1)
        return FutureQueriesScorer(future_queries(self.model, self.recording.prefills, future))


def _until_eos(tokens: torch.Tensor, eos_token_id: int | list[int] | None) -> torch.Tensor:
    """`tokens` up to and including the first end-of-sequence token (batch rows that ended early are padded)."""
    for index, token in enumerate(tokens.tolist()):
        if _is_eos(token, eos_token_id):
            return tokens[: index + 1]
    return tokens


def _is_eos(token: int, eos_token_id: int | list[int] | None) -> bool:
    if eos_token_id is None:
        return False
    return token in (eos_token_id if isinstance(eos_token_id, list) else [eos_token_id])


def full(run: SampleRun, budget: int | float | None) -> Cache:
    return dynamic_cache_from(run.recording.prefills)


@dataclass(frozen=True)
class CacheMethod:
    """A `LookaheadCache` with a scorer and an allocation, compressed from the recorded prefill; for a scorer that
    reads lookahead queries (LookaheadKV), the model's lookahead tokens first run after the recorded prompt."""

    scorer: str
    allocation: str = "uniform"

    @torch.no_grad()
    def __call__(self, run: SampleRun, budget: int | float) -> Cache:
        prefills = run.lookahead_prefills() if self.needs_lookahead else run.recording.prefills
        return LookaheadCache.from_prefill(prefills, budget=budget, scorer=self.scorer, allocation=self.allocation)

    @property
    def needs_lookahead(self) -> bool:
        return SCORERS[self.scorer].needs_lookahead

    @property
    def needs_adapter(self) -> bool:
        """Whether the method reads the model's lookahead adapter: its lookahead tokens, or the LU-KV profile
        shipped beside it."""
        return self.needs_lookahead or self.allocation == "lukv"

    def check(self, model: PreTrainedModel) -> None:
        """Raise now, before any sample is recorded, what the first cache would raise for lack of a file: the
        LU-KV profile of the scorer beside the model's lookahead adapter."""
        if self.allocation == "lukv":
            adapter_profile(model, self.scorer)


def oracle(run: SampleRun, budget: int | float) -> Cache:
    """Keeps what the full-cache answer attends to: the ceiling of score-based eviction."""
    if run.full_answer_ids is None:
        raise ValueError("The oracle method needs the full-cache answer: run the `full` method on the sample first.")
    return LookaheadCache.from_prefill(
        run.recording.prefills, budget=budget, scorer=run.future_scorer(run.full_answer_ids)
    )


def laq(run: SampleRun, budget: int | float) -> Cache:
    """LAQ-style: draft an answer from a SnapKV-compressed cache, then keep what the draft's queries attend to."""
    draft_cache = LookaheadCache.from_prefill(run.recording.prefills, budget=budget, scorer="snapkv")
    draft = run.answer(draft_cache, max_new_tokens=LAQ_DRAFT_TOKENS)
    return LookaheadCache.from_prefill(run.recording.prefills, budget=budget, scorer=run.future_scorer(draft))


METHODS: dict[str, Callable[[SampleRun, int | float | None], Cache]] = {
    FULL: full,
    "streaming": CacheMethod("streaming"),
    "knorm": CacheMethod("knorm"),
    "random": CacheMethod("random"),
    "snapkv": CacheMethod("snapkv"),
    "pyramidkv": CacheMethod("snapkv", allocation="pyramid"),
    "adakv": CacheMethod("snapkv", allocation="adakv"),
    "lukv": CacheMethod("snapkv", allocation="lukv"),
    "oracle": oracle,
    "laq": laq,
    "lookahead": CacheMethod("lookahead"),
    "lookahead-adakv": CacheMethod("lookahead", allocation="adakv"),
    "lookahead-lukv": CacheMethod("lookahead", allocation="lukv"),
}


def get_method(name: str) -> Callable[[SampleRun, int | float | None], Cache]:
    if name not in METHODS:
        raise ValueError(f"Unknown evaluation method {name!r}. Available: {', '.join(METHODS)}.")
    return METHODS[name]


def needs_adapter(name: str) -> bool:
    """Whether method `name` reads the model's lookahead adapter (see `CacheMethod.needs_adapter`)."""
    method = get_method(name)
    return isinstance(method, CacheMethod) and method.needs_adapter


def cache_configuration(config: str) -> CacheMethod:
    """The LookaheadCache configuration named `scorer` or `scorer+allocation`, as `lookahead-cache bench --scorers`
    takes them (the allocation is uniform unless named); the names are checked when a cache is made of it."""
    scorer, _, allocation = config.partition("+")
    return CacheMethod(scorer, allocation or "uniform")
