"""Needle placement, shared by the demo's needle task and the suite's RULER-style tasks."""

import pytest

from lookahead_cache.evaluation.documents import insert_at
from lookahead_cache.evaluation.tasks._haystack import insert_at_depths

UNITS = ["a", "b", "c", "d"]


@pytest.mark.parametrize("position", range(len(UNITS) + 1))
def test_one_insert_goes_before_the_unit_at_its_position(position):
    assert insert_at(UNITS, ["X"], [position]) == [*UNITS[:position], "X", *UNITS[position:]]


def test_inserts_go_in_position_order_and_keep_their_order_at_the_same_position():
    assert insert_at(UNITS, ["X", "Y", "Z"], [3, 1, 3]) == ["a", "Y", "b", "c", "X", "Z", "d"]
    assert insert_at([], ["X", "Y"], [0, 0]) == ["X", "Y"]
    assert insert_at(UNITS, [], []) == UNITS


def test_ruler_depths_are_percentages_of_the_units():
    units = [str(i) for i in range(10)]
    assert insert_at_depths(units, ["X", "Y", "Z"], [100, 0, 55]) == insert_at(units, ["X", "Y", "Z"], [10, 0, 5])
    assert insert_at_depths(units, ["X", "Y"], [0, 100]) == ["X", *units, "Y"]
