"""The methods an evaluation compares, each building its cache from one recorded prefill.

A method is a callable `(SampleRun, budget) -> Cache`, registered by name in `METHODS`; adding one is one function
(or one `CacheMethod(scorer, allocation)`) and one line. Names combine a scorer and an allocation: `adakv` and
`lukv` are SnapKV with AdaKV's and LU-KV's allocations, `lookahead-adakv` and `lookahead-lukv` the lookahead scorer
with them (LU-KV reads the profiles shipped beside the lookahead adapter). Heuristic methods only score the recorded
layers; `oracle` and `laq` first obtain the queries of future tokens (the full-cache answer, or a drafted one) and
score with those; `lookahead` runs the model's learned lookahead tokens after the recorded prompt.

The live modes of `lookahead-cache eval` (streaming prefill, sessions; `lookahead_cache.evaluation.live`) run each
method on the model with a fresh cache instead (`live_cache`); the methods a cache evicting again cannot run are
told by `live_refusal`, and a method's session-budget rows are named `<method>@session` (`session_budget_name`), its
generation-budget rows (the long-output mode, evicting while the answer decodes) `<method>@decode`
(`generation_budget_name`).

This module is the one vocabulary of methods: `FULL` (the uncompressed reference), the method names of
`lookahead-cache eval` (`METHODS`, `get_method`, `needs_adapter`, `session_budget_name`, `generation_budget_name`,
`base_method`), and the cache
configurations of `lookahead-cache bench`, written `scorer` or `scorer+allocation` (`cache_configuration`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel
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

    def answers(self, caches: list[Cache], max_new_tokens: int | None = None) -> list[torch.Tensor]:
        """Per cache, the `[1, k]` greedy answer tokens continuing it; several LookaheadCaches decode as one batch.

        Decoding a small model on a CPU is bound by reading its weights, so one batch of every method's cache
        costs little more than one of them. Question-aware, the first answer token comes from the recorded
        logits: eviction happens after each layer's attention ran on the full prompt, so that token is the same
        for every method.
        """
        limit = self.max_new_tokens if max_new_tokens is None else max_new_tokens
        if self.question_aware:
            first = self.recording.next_token_logits.argmax(-1, keepdim=True)
            return answers_after(self.model, caches, self.prefilled_ids, first, limit, self.eos_token_id)
        return greedy_answers(self.model, caches, self.prefilled_ids, self.question_ids, limit, self.eos_token_id)

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


@torch.no_grad()
def greedy_answers(
    model: PreTrainedModel,
    caches: list[Cache],
    seen_ids: torch.Tensor,
    new_ids: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
    **generate_kwargs,
) -> list[torch.Tensor]:
    """Per cache, each holding `seen_ids` (`[1, n]`, none for an empty cache), the `[1, k]` greedy tokens after
    `seen_ids` + `new_ids`: `generate` feeds `new_ids` through the cache in one forward (its prefill, read in chunks
    with `prefill_chunk_size=`), then decodes up to `max_new_tokens` tokens, up to the first end of sequence.
    Several LookaheadCaches decode as one batch (`LookaheadCache.stack`)."""
    rows = len(caches)
    input_ids = torch.cat([seen_ids, new_ids], dim=-1).expand(rows, -1)
    output = model.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        **{CACHE_ARGUMENT: caches[0] if rows == 1 else LookaheadCache.stack(caches)},
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=eos_token_id,
        pad_token_id=model.generation_config.pad_token_id,
        **generate_kwargs,
    )
    return [_until_eos(row[input_ids.shape[-1] :], eos_token_id)[None] for row in output]


def answers_after(
    model: PreTrainedModel,
    caches: list[Cache],
    prompt_ids: torch.Tensor,
    first: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | list[int] | None,
) -> list[torch.Tensor]:
    """Per cache holding `prompt_ids`, the greedy answer that begins with `first` (`[1, 1]`, the token that the
    prompt's last forward gave): `first` alone when the answer is one token long or `first` ends it, else `first`
    and the tokens decoded after it."""
    if max_new_tokens == 1 or _is_eos(int(first), eos_token_id):
        return [first] * len(caches)
    rest = greedy_answers(model, caches, prompt_ids, first, max_new_tokens - 1, eos_token_id)
    return [torch.cat([first, tokens], dim=-1) for tokens in rest]


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
    # The scorer's arguments other than its defaults, as (name, value) pairs.
    scorer_kwargs: tuple[tuple[str, Any], ...] = ()

    @torch.no_grad()
    def __call__(self, run: SampleRun, budget: int | float) -> Cache:
        prefills = run.lookahead_prefills() if self.needs_lookahead else run.recording.prefills
        return LookaheadCache.from_prefill(
            prefills, budget=budget, scorer=self.scorer, allocation=self.allocation, **self._scorer_kwargs()
        )

    def live_cache(
        self,
        budget: int | float,
        evict_every_prefill: bool = False,
        generation_budget: int | None = None,
        streaming_budget: int | None = None,
    ) -> LookaheadCache:
        """A fresh cache of this configuration, for a live run (`generate` on the model, which evicts); with
        `generation_budget`, one that also evicts while it decodes; with `streaming_budget`, one whose chunks before
        the last keep that many tokens."""
        return LookaheadCache(
            budget=budget,
            scorer=self.scorer,
            allocation=self.allocation,
            evict_every_prefill=evict_every_prefill,
            generation_budget=generation_budget,
            streaming_budget=streaming_budget,
            **self._scorer_kwargs(),
        )

    def _scorer_kwargs(self) -> dict[str, Any]:
        return {"scorer_kwargs": dict(self.scorer_kwargs)} if self.scorer_kwargs else {}

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
    "lookahead-window": CacheMethod("lookahead", scorer_kwargs=(("window", 32),)),
}


# In the session mode each method also runs with a session budget (`evict_every_prefill=True`: every turn evicts
# again, down to the budget); those rows are named `<method>@session`, beside the method's own rows, whose cache
# evicts the first turn only and keeps the later turns whole.
SESSION_BUDGET_SUFFIX = "@session"


def session_budget_name(name: str) -> str:
    """The name of method `name`'s rows with a session budget."""
    return f"{name}{SESSION_BUDGET_SUFFIX}"


# In the long-output mode each method also runs with a generation budget (`generation_budget=G`: the tokens after
# the prompt are evicted while the answer decodes, down to G per layer and KV head); those rows are named
# `<method>@decode`, beside the method's own rows, whose cache evicts the prompt and keeps every generated token.
GENERATION_BUDGET_SUFFIX = "@decode"


def generation_budget_name(name: str) -> str:
    """The name of method `name`'s rows with a generation budget."""
    return f"{name}{GENERATION_BUDGET_SUFFIX}"


def base_method(name: str) -> str:
    """The method of rows named `name`: `name` less its `@session` or `@decode` suffix."""
    return name.removesuffix(SESSION_BUDGET_SUFFIX).removesuffix(GENERATION_BUDGET_SUFFIX)


def live_cache(
    name: str,
    budget: int | float | None,
    generation_budget: int | None = None,
    streaming_budget: int | None = None,
) -> Cache:
    """A fresh cache of method `name` (or `<method>@session`, `<method>@decode`) for a live run, which reads the
    prompt with `generate` on the model instead of replaying a recorded prefill: a `DynamicCache` for `full`, the
    method's `LookaheadCache` otherwise (with `evict_every_prefill=True` for `<method>@session`, with
    `generation_budget` for `<method>@decode`, with `streaming_budget` for a prompt read in chunks).

    Raises:
        ValueError: The method cannot run live (`oracle`, `laq`: `live_refusal` says why), its cache refuses the
            settings, or `<method>@decode` has no `generation_budget`.
    """
    base = base_method(name)
    if base == FULL:
        return DynamicCache()
    method = get_method(base)
    if not isinstance(method, CacheMethod):
        raise ValueError(f"Method {base!r} cannot run live: {live_refusal(base, budget)}")
    if name == generation_budget_name(base):
        if generation_budget is None:
            raise ValueError(f"{name!r} rows need a generation_budget.")
        return method.live_cache(budget, generation_budget=generation_budget)
    return method.live_cache(
        budget, evict_every_prefill=name == session_budget_name(base), streaming_budget=streaming_budget
    )


def live_refusal(name: str, budget: int | float, generation_budget: int | None = None) -> str | None:
    """Why method `name` cannot run live at `budget`, or None when it can: with a cache that evicts again (a prompt
    read in chunks, a session budget), or with `generation_budget`, with one that evicts while it decodes (the
    long-output mode). The cache's own checks decide (`LookaheadCache` refuses what a later prefill cannot evict
    again: a fraction of a prompt, per-head allocations; and a generation budget too small for its interval and
    window); `oracle` and `laq` score with the queries of future tokens taken from a recorded prefill, which a live
    run has not."""
    method = get_method(name)
    if method is full:
        return None
    if not isinstance(method, CacheMethod):
        return (
            "it scores a recorded prefill with the queries of future tokens (the full-cache answer, or a drafted "
            "one), which a cache evicting inside generate has not."
        )
    try:
        if generation_budget is None:
            method.live_cache(budget, evict_every_prefill=True)
        else:
            method.live_cache(budget, generation_budget=generation_budget)
    except ValueError as error:
        return str(error)
    return None


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
