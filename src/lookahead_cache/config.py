"""Configuration of a :class:`~lookahead_cache.LookaheadCache`, serialisable to JSON."""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BUDGET = 512
# "auto": the lookahead scorer on a model that carries a lookahead adapter, snapkv on any other.
DEFAULT_SCORER = "auto"
DEFAULT_ALLOCATION = "uniform"
DEFAULT_SINK = 4
DEFAULT_WINDOW = 32
DEFAULT_GENERATION_INTERVAL = 32


@dataclass
class LookaheadCacheConfig:
    """What a :class:`~lookahead_cache.LookaheadCache` keeps at the end of prefill.

    Args:
        budget: Prompt tokens kept per layer and KV head, on average. An `int` is a token count; a `float`
            in (0, 1] is a fraction of each row's (unpadded) prompt. Sink and window tokens count towards it.
            A prompt no longer than the budget is kept whole.
        scorer: Name of the token scorer (see `lookahead_cache.available_scorers()`), or "auto": `lookahead` when
            the model carries a lookahead adapter (`load_lookahead`), `snapkv` otherwise.
        allocation: Name of the budget allocator (see `lookahead_cache.available_allocations()`).
        sink: First prompt tokens always kept (attention sinks).
        window: Last prompt tokens always kept.
        scorer_kwargs: Keyword arguments for the scorer (e.g. `{"window": 64}` for snapkv).
        allocation_kwargs: Keyword arguments for the allocator (e.g. `{"beta": 20}` for pyramid).
        evict_every_prefill: Evict again at every later forward of several tokens (a turn, a chunk), so that a
            session stays within the budget plus the current forward's tokens.
        generation_budget: Tokens after the prompt (generated ones, and later turns appended whole) kept per layer
            and KV head; None (the default) keeps them all. When they reach it, those of the last
            `generation_interval` forwards vote, with their queries, for the ones to keep, down to
            `generation_budget - generation_interval`; the last `window` of them are always kept.
        generation_interval: Tokens generated between two evictions of the generated part.
        streaming_budget: Tokens per layer and KV head that the chunks of a `generate(prefill_chunk_size=...)`
            prefill but the last are evicted to (at least `budget`); the last chunk, which holds the end of the prompt
            (the question), evicts to `budget`. None (the default): every chunk evicts to `budget`. A larger one lets
            the last chunk's queries (or lookahead rows) choose among more of the earlier tokens, at the cost of
            streaming_budget + chunk tokens held while the prompt streams in.
    """

    budget: int | float = DEFAULT_BUDGET
    scorer: str = DEFAULT_SCORER
    allocation: str = DEFAULT_ALLOCATION
    sink: int = DEFAULT_SINK
    window: int = DEFAULT_WINDOW
    scorer_kwargs: dict[str, Any] = field(default_factory=dict)
    allocation_kwargs: dict[str, Any] = field(default_factory=dict)
    evict_every_prefill: bool = False
    generation_budget: int | None = None
    generation_interval: int = DEFAULT_GENERATION_INTERVAL
    streaming_budget: int | None = None

    def __post_init__(self):
        # NumPy and other numeric scalars (e.g. a budget from np.arange) are taken as the int or float they hold.
        self.budget = _plain_number(self.budget)
        self.sink, self.window = _plain_number(self.sink), _plain_number(self.window)
        if isinstance(self.budget, bool) or not isinstance(self.budget, (int, float)):
            raise TypeError(
                f"budget must be an int (tokens kept per KV head) or a float in (0, 1] (fraction of the prompt), "
                f"got {self.budget!r}."
            )
        if isinstance(self.budget, float):
            if not (0.0 < self.budget <= 1.0) or math.isnan(self.budget):
                raise ValueError(
                    f"budget={self.budget} is not a valid fraction: a float budget must lie in (0, 1]. "
                    "Pass an int to keep a fixed number of tokens."
                )
        elif self.budget <= 0:
            raise ValueError(f"budget={self.budget} must be positive: the number of prompt tokens kept per KV head.")
        if not isinstance(self.evict_every_prefill, bool):
            raise TypeError(f"evict_every_prefill must be True or False, got {self.evict_every_prefill!r}.")
        for name in ("sink", "window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be a non-negative int.")
        if isinstance(self.budget, int) and self.sink + self.window > self.budget:
            raise ValueError(
                f"sink ({self.sink}) + window ({self.window}) = {self.sink + self.window} protected tokens exceed "
                f"budget={self.budget}. Raise the budget or pass smaller sink/window values."
            )
        self._check_generation_budget()
        self._check_streaming_budget()

    def _check_streaming_budget(self) -> None:
        if self.streaming_budget is None:
            return
        self.streaming_budget = _plain_number(self.streaming_budget)
        if isinstance(self.streaming_budget, bool) or not isinstance(self.streaming_budget, int):
            raise ValueError(f"streaming_budget={self.streaming_budget!r} must be an int (tokens per KV head) or None.")
        if not isinstance(self.budget, int) or self.streaming_budget < self.budget:
            raise ValueError(
                f"streaming_budget={self.streaming_budget} must be an int no smaller than budget={self.budget}: the "
                "chunks before the last are evicted to it, the last to the budget. Pass an int budget and a "
                "streaming_budget of at least that many tokens."
            )

    def _check_generation_budget(self) -> None:
        self.generation_interval = _plain_number(self.generation_interval)
        interval = self.generation_interval
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"generation_interval={interval!r} must be a positive int (generated tokens).")
        if self.generation_budget is None:
            return
        self.generation_budget = _plain_number(self.generation_budget)
        budget = self.generation_budget
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise ValueError(
                f"generation_budget={budget!r} must be a positive int (tokens after the prompt kept per KV head), "
                "or None to keep them all."
            )
        if budget < interval + self.window:
            raise ValueError(
                f"generation_budget={budget} must hold generation_interval ({interval}) + window ({self.window}) = "
                f"{interval + self.window} tokens: every {interval} tokens the generated part is evicted down to "
                f"{budget} - {interval}, keeping its last {self.window}. Raise generation_budget or lower "
                "generation_interval or window."
            )

    @property
    def protected(self) -> int:
        return self.sink + self.window

    def row_budget(self, prompt_length: int) -> int:
        """Tokens kept per KV head for one prompt of `prompt_length` real tokens (before clamping to it)."""
        if isinstance(self.budget, int):
            return self.budget
        budget = max(1, round(self.budget * prompt_length))
        if budget < min(prompt_length, self.protected):
            raise ValueError(
                f"budget={self.budget} of a {prompt_length}-token prompt is {budget} tokens, fewer than the "
                f"{self.protected} protected sink ({self.sink}) + window ({self.window}) tokens. "
                "Raise the budget or pass smaller sink/window values."
            )
        return budget

    def keeps_whole(self, prompt_lengths: list[int]) -> bool:
        """Whether prompts of these real lengths all fit their budgets: the cache then keeps every token without
        scoring any, and the lookahead adapter adds no rows to their prefill."""
        return all(self.row_budget(length) >= length for length in prompt_lengths)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path) -> LookaheadCacheConfig:
        return cls(**json.loads(Path(path).read_text()))


def _plain_number(value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    return value
