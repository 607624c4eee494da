"""The bad-input matrix of the cache: every misuse a user met, each either refused with an error that names the
problem and the fix, or handled correctly; none silent.

One row per case, run by one of two table-driven tests: `REFUSED` (the error and its message) and `HANDLED` (a check
of the correct result). The matrices of the other entry points live beside their own fixtures: adapters in
`test_adapter_loading.py` (`BAD_ADAPTERS`, `FAILURES`), run folders of `eval`, `train`, `profile` and `bench` in
`test_run_folders.py`. `torch.compile` (default and `dynamic=True`), which crashed on symbolic sizes, is tested
in `test_cache.py` (slow).
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import prompt_ids, synthetic_profile, tiny_model
from torch import nn
from transformers import DynamicCache

from lookahead_cache import LookaheadCache
from lookahead_cache.allocation import LUKVAllocator
from lookahead_cache.prefill import CACHE_ARGUMENT
from lookahead_cache.scorers import Scorer

SETTINGS = dict(budget=16, scorer="snapkv", sink=2, window=4)


def prefill(cache, length=40, model=None, **inputs):
    with torch.no_grad():
        return (model or tiny_model())(prompt_ids(length, **inputs), **{CACHE_ARGUMENT: cache}).logits


def generate(model, input_ids, cache, **kwargs):
    return model.generate(input_ids, **{CACHE_ARGUMENT: cache}, max_new_tokens=4, do_sample=False, **kwargs)


class BrokenScorer(Scorer):
    def score(self, prefill):
        return torch.zeros(prefill.keys.shape[-2])


class OpaqueAttention(nn.Module):
    """Stores keys in the cache but receives it positionally, so the cache cannot see it."""

    def __init__(self, layer_idx):
        super().__init__()
        self.layer_idx = layer_idx

    def forward(self, hidden, cache):
        states = hidden.view(1, 1, hidden.shape[1], -1)
        cache.update(states, states, self.layer_idx)
        return hidden


class OpaqueModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList(OpaqueAttention(i) for i in range(2))

    def forward(self, hidden, cache):
        for layer in self.layers:
            hidden = layer(hidden, cache)
        return hidden


def flex_attention_prefill():
    model = tiny_model()
    model.set_attn_implementation("flex_attention")
    prefill(LookaheadCache(**SETTINGS), model=model)


def reuse_after_a_raised_prefill():
    model = tiny_model()
    cache = LookaheadCache(**SETTINGS)
    failing = model.model.layers[1].mlp.register_forward_hook(lambda *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        prefill(cache, model=model)
    failing.remove()
    prefill(cache, model=model)


def another_batch_size():
    model = tiny_model()
    cache = LookaheadCache(**SETTINGS)
    prefill(cache, model=model)
    prefill(cache, length=1, model=model, batch=2)


def profile_of_other_sink_and_window():
    profile = synthetic_profile()  # made with sink=2, window=4
    prefill(LookaheadCache(budget=16, scorer="snapkv", allocation=LUKVAllocator(profile), sink=4, window=8))


@dataclass
class Refused:
    name: str
    call: Callable[[], object]
    error: type[Exception]
    message: str

    def __str__(self):
        return self.name


REFUSED = [
    Refused("budget 0", lambda: LookaheadCache(budget=0), ValueError, "budget=0 must be positive"),
    Refused("budget -5", lambda: LookaheadCache(budget=-5), ValueError, "budget=-5 must be positive"),
    *(
        Refused(f"fraction {budget}", lambda b=budget: LookaheadCache(budget=b), ValueError, r"must lie in \(0, 1\]")
        for budget in (1.5, 0.0, -0.1, float("nan"))
    ),
    *(
        Refused(f"budget {budget!r}", lambda b=budget: LookaheadCache(budget=b), TypeError, "budget must be an int")
        for budget in (True, "256", None, np.bool_(True))
    ),
    *(
        Refused(
            f"sink {sink} + window {window} > budget",
            lambda s=sink, w=window: LookaheadCache(budget=16, sink=s, window=w),
            ValueError,
            "protected tokens exceed budget=16",
        )
        for sink, window in [(0, 40), (40, 0), (10, 10)]
    ),
    Refused("window -1", lambda: LookaheadCache(window=-1), ValueError, "window=-1 must be a non-negative int"),
    Refused(
        "fraction below the protected tokens",
        lambda: prefill(LookaheadCache(budget=0.1, scorer="knorm", sink=4, window=8), length=50),
        ValueError,
        "fewer than the 12 protected",
    ),
    Refused(
        "unknown scorer",
        lambda: LookaheadCache(scorer="h2o"),
        ValueError,
        "Unknown scorer 'h2o'. Available scorers: lookahead, snapkv",
    ),
    Refused(
        "unknown allocation",
        lambda: LookaheadCache(allocation="snapkv"),
        ValueError,
        "Unknown allocation 'snapkv'. Available allocations: uniform, pyramid, adakv",
    ),
    Refused(
        "unknown scorer argument",
        lambda: LookaheadCache(scorer="snapkv", scorer_kwargs={"kernel": 5}),
        TypeError,
        "kernel",
    ),
    Refused(
        "scorer_kwargs with scorer='auto'",
        lambda: LookaheadCache(scorer_kwargs={"window": 8}),
        ValueError,
        "need a named scorer",
    ),
    Refused(
        "even pooling kernel",
        lambda: LookaheadCache(scorer="snapkv", scorer_kwargs={"kernel_size": 4}),
        ValueError,
        "kernel_size=4 must be a positive odd number",
    ),
    Refused(
        "scorer returning a wrong shape",
        lambda: prefill(LookaheadCache(budget=16, scorer=BrokenScorer(), window=4)),
        ValueError,
        r"BrokenScorer.score returned shape \(40,\)",
    ),
    Refused(
        "lookahead scorer without an adapter",
        lambda: prefill(LookaheadCache(budget=16, scorer="lookahead", window=4)),
        ValueError,
        "scorer='lookahead' needs a model with a lookahead adapter",
    ),
    Refused(
        "unsupported attention implementation",
        flex_attention_prefill,
        ValueError,
        "supports attn_implementation 'sdpa', 'eager' and 'lookahead_varlen'",
    ),
    Refused(
        "attention modules that take the cache positionally",
        lambda: OpaqueModel()(torch.zeros(1, 10, 8), cache=LookaheadCache(budget=4, scorer="knorm", sink=0, window=0)),
        RuntimeError,
        "could not find the attention module of layer 0",
    ),
    Refused(
        "reuse after a prefill that raised",
        reuse_after_a_raised_prefill,
        RuntimeError,
        r"prefill raised before it ended .* Call `cache.reset\(\)`",
    ),
    Refused(
        "a used cache with another batch size",
        another_batch_size,
        ValueError,
        r"holds 1 compressed prompt\(s\), but the forward passes a batch of 2: .* fresh LookaheadCache",
    ),
    Refused(
        "crop after eviction",
        lambda: (cache := LookaheadCache(**SETTINGS), prefill(cache), cache.crop(-1)),
        ValueError,
        "cannot be restored",
    ),
    Refused(
        "LU-KV profile of other sink/window",
        profile_of_other_sink_and_window,
        ValueError,
        r"made with sink=2, window=4, but the cache protects sink=4, window=8",
    ),
]


# Flex attention compiles its kernel on first use: seconds, out of the fast loop.
SLOW_CASES = {"unsupported attention implementation"}


@pytest.mark.parametrize(
    "case",
    [pytest.param(case, marks=pytest.mark.slow) if case.name in SLOW_CASES else case for case in REFUSED],
    ids=str,
)
def test_bad_input_is_refused_with_a_message_naming_the_fix(case):
    with pytest.raises(case.error, match=case.message):
        case.call()


def numpy_budgets():
    cache = LookaheadCache(budget=np.int64(16), scorer="snapkv", sink=np.int32(2), window=np.int64(4))
    prefill(cache)
    fraction = LookaheadCache(budget=np.float32(0.5), scorer="snapkv", sink=2, window=4)
    prefill(fraction)
    assert cache.cache_config.budget == 16 and type(cache.cache_config.budget) is int
    assert bool((cache.kept_tokens() == 16).all()) and bool((fraction.kept_tokens() == 20).all())


def reset_rearms():
    """After `reset()` the cache evicts the next prompt exactly as a fresh cache does, also after a prefill that
    raised."""
    model = tiny_model()
    settings = dict(budget=12, scorer="snapkv", window=4)
    second_prompt = prompt_ids(54, seed=3)
    fresh = LookaheadCache(**settings)
    expected = generate(model, second_prompt, fresh)
    cache = LookaheadCache(**settings)
    generate(model, prompt_ids(40), cache)
    cache.reset()
    assert not cache.is_compressed and cache.get_seq_length() == 0 and cache.peak_nbytes == 0
    assert torch.equal(generate(model, second_prompt, cache), expected)
    assert torch.equal(cache.kept_tokens(), fresh.kept_tokens()) and cache.peak_nbytes == fresh.peak_nbytes
    failing = model.model.layers[1].mlp.register_forward_hook(lambda *args: 1 / 0)
    cache.reset()
    with pytest.raises(ZeroDivisionError):
        generate(model, prompt_ids(40), cache)
    failing.remove()
    cache.reset()
    assert torch.equal(generate(model, second_prompt, cache), expected)


def prompt_within_budget_is_the_full_cache():
    model = tiny_model()
    assert torch.equal(
        prefill(LookaheadCache(budget=40, scorer="snapkv"), model=model), prefill(DynamicCache(), model=model)
    )


@dataclass
class Handled:
    name: str
    check: Callable[[], None]

    def __str__(self):
        return self.name


HANDLED = [
    Handled("NumPy budget, sink and window", numpy_budgets),
    Handled("reset() re-arms eviction, also after a prefill that raised", reset_rearms),
    Handled("prompt within the budget", prompt_within_budget_is_the_full_cache),
]


@pytest.mark.parametrize("case", HANDLED, ids=str)
def test_misuse_that_has_a_right_answer_gets_it(case):
    case.check()
