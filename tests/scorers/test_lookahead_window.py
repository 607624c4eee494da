"""The lookahead scorer with the prompt's last queries voting beside the lookahead queries."""

from dataclasses import replace

import pytest
import torch
from conftest import prompt_ids, tiny_model

from lookahead_cache.evaluation.replay import record_prefill
from lookahead_cache.scorers import LookaheadScorer, SnapKVScorer


@pytest.mark.parametrize("window", [8, 64])
def test_window_queries_vote_beside_the_lookahead_queries_one_vote_each(window):
    model = tiny_model()
    prefill = record_prefill(model, prompt_ids(40)).prefills[1]
    q_heads, head_dim = model.config.num_attention_heads, prefill.keys.shape[-1]
    lookahead = torch.randn(1, q_heads, 5, head_dim, generator=torch.Generator().manual_seed(0))
    prefill = replace(prefill, lookahead_queries=lookahead)

    mixed = LookaheadScorer(kernel_size=1, window=window).score(prefill)
    alone = LookaheadScorer(kernel_size=1).score(prefill)
    voters = min(window, 40)
    snapkv = SnapKVScorer(window=window, kernel_size=1).score(prefill)
    torch.testing.assert_close(mixed, (5 * alone + voters * snapkv) / (5 + voters))
    assert not torch.allclose(mixed, alone)


def test_a_negative_window_is_refused():
    with pytest.raises(ValueError, match="lookahead window=-1"):
        LookaheadScorer(window=-1)
