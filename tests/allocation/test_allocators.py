"""How the budget is shared out among layers (pyramid) and KV heads (adakv)."""

import pytest
import torch
from conftest import prompt_ids, tiny_model

from lookahead_cache import LookaheadCache
from lookahead_cache.prefill import CACHE_ARGUMENT


def test_pyramid_budgets_shrink_with_depth_and_keep_the_total():
    model = tiny_model()
    cache = LookaheadCache(budget=20, scorer="snapkv", allocation="pyramid", sink=2, window=4)
    with torch.no_grad():
        model(prompt_ids(64), **{CACHE_ARGUMENT: cache})
    per_layer = cache.kept_tokens()[:, 0, 0].tolist()
    assert per_layer == sorted(per_layer, reverse=True) and per_layer[0] > per_layer[-1]
    assert sum(per_layer) == 3 * 20
    assert all(kept >= 6 for kept in per_layer)


def test_adakv_gives_concentrated_heads_fewer_tokens_and_keeps_each_layers_total():
    from lookahead_cache.allocation import AdaKVAllocator

    # Head 0 puts its mass on 2 tokens, head 1 spreads it: head 1 gets the budget head 0 does not need, down to
    # head 0's safeguard floor. 14 selectable tokens per head (20 - sink 2 - window 4), 28 in the layer.
    scores = torch.full((1, 2, 40), 0.001)
    scores[0, 0, 10:12] = 0.5
    scores[0, 1] = torch.linspace(0.02, 0.03, 40)
    scores[..., :2] = scores[..., -4:] = float("-inf")

    def allocate(alpha):
        return AdaKVAllocator(alpha).allocate(
            scores, torch.tensor([20]), torch.tensor([40]), protected=6, layer_idx=0, num_layers=1
        )

    assert allocate(0.0).tolist() == [[6 + 2, 6 + 26]]
    assert allocate(0.5).tolist() == [[6 + 7, 6 + 21]]  # floor: 7 = 0.5 * 14
    assert allocate(1.0).tolist() == [[20, 20]]  # a full safeguard is the uniform allocation


@pytest.mark.parametrize("scorer", ["snapkv", "knorm"])
def test_adakv_cache_keeps_varying_heads_within_the_uniform_total(scorer):
    model = tiny_model()
    cache = LookaheadCache(budget=20, scorer=scorer, allocation="adakv", sink=2, window=4)
    with torch.no_grad():
        model(prompt_ids(64), **{CACHE_ARGUMENT: cache})
    kept = cache.kept_tokens()[:, 0]
    assert kept.sum(-1).tolist() == [kept.shape[-1] * 20] * kept.shape[0]
    assert bool((kept >= 6 + 2).all()) and bool((kept[:, 0] != kept[:, 1]).any())
