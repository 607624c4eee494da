"""Score pooling shared by the attention-based scorers (snapkv, lookahead)."""

import pytest
import torch

from lookahead_cache import LookaheadCache
from lookahead_cache.scorers.base import pool_scores


@pytest.mark.parametrize("pooling", ["max", "avg"])
@pytest.mark.parametrize("shift", [-2, -1, 0, 1, 2])
def test_pooling_window_covers_the_tokens_its_shift_says(pooling, shift):
    scores = torch.rand(2, 3, 17, generator=torch.Generator().manual_seed(shift + 2))
    pooled = pool_scores(scores, 5, pooling, shift=shift)
    for t in range(17):
        # Out of range counts as -inf for max and as a zero for avg, as the centred pools pad.
        window = [scores[..., i] if 0 <= i < 17 else None for i in range(t - 2 - shift, t + 3 - shift)]
        if pooling == "max":
            expected = torch.stack([w for w in window if w is not None]).amax(0)
        else:
            expected = torch.stack([torch.zeros(2, 3) if w is None else w for w in window]).mean(0)
        torch.testing.assert_close(pooled[..., t], expected)


def test_a_shift_beyond_half_the_kernel_is_refused():
    with pytest.raises(ValueError, match="shift=3 must lie within half the pooling kernel"):
        LookaheadCache(budget=64, scorer="lookahead", scorer_kwargs={"kernel_size": 5, "shift": 3})
