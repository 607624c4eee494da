"""scripts/simulate_paged_blocks.py counts what it says: on masks small enough to count by hand, the blocks a paged
engine frees and the token slots each layout holds."""

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "simulate_paged_blocks.py"


@pytest.fixture(scope="module")
def usage():
    spec = importlib.util.spec_from_file_location("simulate_paged_blocks", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.paged_block_usage


def masks(tokens: int, kept_per_layer: list[list[list[int]]]) -> torch.Tensor:
    """`[layers, kv_heads, tokens]`, True at the positions each layer's heads keep."""
    kept = torch.zeros(len(kept_per_layer), len(kept_per_layer[0]), tokens, dtype=torch.bool)
    for layer, heads in enumerate(kept_per_layer):
        for head, positions in enumerate(heads):
            kept[layer, head, positions] = True
    return kept


def every_token(tokens: int) -> torch.Tensor:
    return torch.ones(tokens, dtype=torch.bool)


def test_heads_that_agree_free_the_blocks_they_all_dropped(usage):
    # Two heads keep tokens 0 and 1: block 0 stays, block 1 (tokens 4-7) is free.
    result = usage(masks(8, [[[0, 1], [0, 1]]]), every_token(8), block_size=4)
    assert result["freed_blocks_per_layer"] == [1] and result["freed_blocks_all_layers"] == 1
    assert result["full_slots"] == 16 and result["packed_slots"] == 4
    assert result["paged_per_layer_table_slots"] == result["paged_one_table_slots"] == 8
    assert result["compacted_one_length_slots"] == result["compacted_per_layer_length_slots"] == 8


def test_heads_that_disagree_keep_every_block_though_each_head_keeps_as_many(usage):
    # Head 0 keeps block 0's tokens, head 1 block 1's: no block is free, while compaction needs one block.
    result = usage(masks(8, [[[0, 1], [4, 5]]]), every_token(8), block_size=4)
    assert result["freed_blocks_per_layer"] == [0]
    assert result["packed_slots"] == 4 and result["paged_per_layer_table_slots"] == 16
    assert result["compacted_one_length_slots"] == 8


def test_the_partial_last_block_is_whole_and_freed_only_when_no_head_keeps_its_tokens(usage):
    # 10 tokens in blocks of 4: blocks 0-3, 4-7 and 8-9, the last allocated whole.
    dropped = usage(masks(10, [[[0], [1]]]), every_token(10), block_size=4)
    assert dropped["blocks_per_layer"] == 3 and dropped["freed_blocks_per_layer"] == [2]
    assert dropped["paged_per_layer_table_slots"] == 8
    kept_last = usage(masks(10, [[[0], [9]]]), every_token(10), block_size=4)
    assert kept_last["freed_blocks_per_layer"] == [1] and kept_last["paged_per_layer_table_slots"] == 16


def test_one_block_table_for_all_layers_frees_only_what_every_layer_dropped(usage):
    # Layer 0 keeps block 0, layer 1 block 1: each layer alone frees one block, together none.
    result = usage(masks(8, [[[0], [1]], [[4], [5]]]), every_token(8), block_size=4)
    assert result["freed_blocks_per_layer"] == [1, 1] and result["freed_blocks_all_layers"] == 0
    assert result["paged_per_layer_table_slots"] == 2 * 8 and result["paged_one_table_slots"] == 2 * 2 * 8


def test_compaction_with_one_length_holds_the_longest_head_of_every_layer(usage):
    # Layer 0's heads keep 5 and 1 tokens, layer 1's 1 and 1: one length means two blocks in both layers.
    result = usage(masks(8, [[[0, 1, 2, 3, 4], [0]], [[0], [0]]]), every_token(8), block_size=4)
    assert result["packed_slots"] == 8
    assert result["compacted_one_length_slots"] == 2 * 2 * 8 and result["compacted_per_layer_length_slots"] == 3 * 8


def test_left_padding_is_not_stored_and_gives_the_unpadded_counts(usage):
    unpadded = usage(masks(6, [[[0], [5]]]), every_token(6), block_size=4)
    real = torch.tensor([False, False] + [True] * 6)
    padded = usage(masks(8, [[[2], [7]]]), real, block_size=4)
    assert padded == unpadded
    assert padded["blocks_per_layer"] == 2 and padded["freed_blocks_per_layer"] == [0]


def test_a_mask_keeping_padding_is_refused(usage):
    real = torch.tensor([False] + [True] * 7)
    with pytest.raises(ValueError, match="padding tokens as kept"):
        usage(masks(8, [[[0], [3]]]), real, block_size=4)
