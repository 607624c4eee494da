"""Bad input gets a clear error that names the problem and the fix."""

import pytest
import torch
from conftest import prompt_ids, tiny_model
from torch import nn

from lookahead_cache import LookaheadCache
from lookahead_cache.prefill import CACHE_ARGUMENT
from lookahead_cache.scorers import Scorer


@pytest.mark.parametrize("budget", [0, -5])
def test_non_positive_budget_is_refused(budget):
    with pytest.raises(ValueError, match="must be positive"):
        LookaheadCache(budget=budget, scorer="snapkv")


@pytest.mark.parametrize("budget", [1.5, 0.0, -0.1, float("nan")])
def test_fraction_outside_zero_one_is_refused(budget):
    with pytest.raises(ValueError, match=r"must lie in \(0, 1\]"):
        LookaheadCache(budget=budget, scorer="snapkv")


@pytest.mark.parametrize("budget", [True, "256", None])
def test_budget_of_wrong_type_is_refused(budget):
    with pytest.raises(TypeError, match="budget must be an int"):
        LookaheadCache(budget=budget, scorer="snapkv")


@pytest.mark.parametrize("sink, window", [(0, 40), (40, 0), (10, 10)])
def test_sink_and_window_larger_than_budget_are_refused(sink, window):
    with pytest.raises(ValueError, match="protected tokens exceed budget=16"):
        LookaheadCache(budget=16, scorer="snapkv", sink=sink, window=window)


def test_negative_window_is_refused():
    with pytest.raises(ValueError, match="window=-1 must be a non-negative int"):
        LookaheadCache(budget=16, scorer="snapkv", window=-1)


def test_fraction_leaving_less_than_the_protected_tokens_is_refused_at_prefill():
    model = tiny_model()
    cache = LookaheadCache(budget=0.1, scorer="knorm", sink=4, window=8)
    with pytest.raises(ValueError, match="fewer than the 12 protected"):
        with torch.no_grad():
            model(prompt_ids(50), **{CACHE_ARGUMENT: cache})


def test_unknown_scorer_names_the_available_ones():
    with pytest.raises(ValueError, match="Unknown scorer 'h2o'. Available scorers: lookahead, snapkv"):
        LookaheadCache(budget=64, scorer="h2o")


def test_unknown_allocation_names_the_available_ones():
    with pytest.raises(ValueError, match="Unknown allocation 'snapkv'. Available allocations: uniform, pyramid, adakv"):
        LookaheadCache(budget=64, scorer="snapkv", allocation="snapkv")


def test_unknown_scorer_argument_is_refused():
    with pytest.raises(TypeError, match="kernel"):
        LookaheadCache(budget=64, scorer="snapkv", scorer_kwargs={"kernel": 5})


def test_even_pooling_kernel_is_refused():
    with pytest.raises(ValueError, match="kernel_size=4 must be a positive odd number"):
        LookaheadCache(budget=64, scorer="snapkv", scorer_kwargs={"kernel_size": 4})


def test_scorer_returning_a_wrong_shape_is_reported():
    class BrokenScorer(Scorer):
        def score(self, prefill):
            return torch.zeros(prefill.keys.shape[-2])

    with pytest.raises(ValueError, match=r"BrokenScorer.score returned shape \(40,\)"):
        with torch.no_grad():
            tiny_model()(prompt_ids(40), **{CACHE_ARGUMENT: LookaheadCache(budget=16, scorer=BrokenScorer(), window=4)})


def test_unsupported_attention_implementation_is_refused():
    model = tiny_model()
    model.set_attn_implementation("flex_attention")
    with pytest.raises(ValueError, match="supports attn_implementation 'sdpa', 'eager' and 'lookahead_varlen'"):
        with torch.no_grad():
            model(prompt_ids(40), **{CACHE_ARGUMENT: LookaheadCache(budget=16, scorer="snapkv", window=4)})


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


def test_model_whose_attention_modules_cannot_be_found_is_refused():
    with pytest.raises(RuntimeError, match="could not find the attention module of layer 0"):
        OpaqueModel()(torch.zeros(1, 10, 8), cache=LookaheadCache(budget=4, scorer="knorm", sink=0, window=0))
