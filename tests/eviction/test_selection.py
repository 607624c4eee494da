"""Which prompt tokens each KV head keeps: its top scores, the sink and the window, whatever the padding."""

import torch
from conftest import prompt_ids, tiny_model
from transformers import DynamicCache

from lookahead_cache import LookaheadCache
from lookahead_cache.prefill import CACHE_ARGUMENT
from lookahead_cache.scorers import Scorer


class FixedScorer(Scorer):
    """Scores given by a function of (layer, head, position), to check which tokens the cache keeps."""

    def __init__(self, fn):
        self.fn = fn

    def score(self, prefill):
        batch, heads, length, _ = prefill.keys.shape
        layer = torch.full((heads, length), prefill.layer_idx)
        head = torch.arange(heads)[:, None].expand(heads, length)
        position = torch.arange(length)[None].expand(heads, length)
        return self.fn(layer, head, position).float().expand(batch, heads, length)


def test_each_head_keeps_its_top_scores_plus_sink_and_window():
    model = tiny_model()
    # Head 0 prefers early positions, head 1 late ones, shifted by layer.
    scorer = FixedScorer(lambda layer, head, position: torch.where(head == 0, -position, position) + layer * 0)
    cache = LookaheadCache(budget=12, scorer=scorer, sink=2, window=3)
    length = 40
    with torch.no_grad():
        model(prompt_ids(length), **{CACHE_ARGUMENT: cache})
    protected = {0, 1, 37, 38, 39}
    head0 = protected | set(range(2, 2 + 7))
    head1 = protected | set(range(37 - 7, 37))
    assert all(layer.prompt_slot_valid is None for layer in cache.layers)
    # Kept keys are the original keys at those positions.
    with torch.no_grad():
        full = DynamicCache()
        model(prompt_ids(length), **{CACHE_ARGUMENT: full})
    for layer_idx, layer in enumerate(cache.layers):
        for head, positions in ((0, head0), (1, head1)):
            expected = full.layers[layer_idx].keys[0, head, sorted(positions)]
            assert torch.equal(layer.keys[0, head], expected)


def test_selection_breaks_score_ties_the_same_way_with_left_padding():
    from lookahead_cache.selection import select_tokens

    # Max pooling gives plateaus of equal scores; which tied tokens are kept must not depend on the padding.
    real = torch.tensor([0.1, 0.5, 0.5, 0.5, 0.5, 0.5, 0.2, 0.3])
    padded = torch.cat([torch.zeros(5), real])
    scores = torch.stack([torch.cat([real, torch.zeros(5)]), padded])[:, None]
    valid = torch.tensor([[True] * 8 + [False] * 5, [False] * 5 + [True] * 8])
    positions, slot_valid = select_tokens(scores, valid, torch.tensor([[4], [4]]), sink=0, window=0)
    assert slot_valid.all()
    assert positions[0, 0].tolist() == [1, 2, 3, 4]
    assert (positions[1, 0] - 5).tolist() == [1, 2, 3, 4]
