"""The one vocabulary of methods: eval's method names and bench's `scorer+allocation` configurations."""

import pytest
from transformers import DynamicCache

from lookahead_cache.cache import LookaheadCache
from lookahead_cache.evaluation import benchmark, methods
from lookahead_cache.evaluation.methods import FULL, METHODS, CacheMethod, cache_configuration, needs_adapter


@pytest.mark.parametrize(
    "config, scorer, allocation, adapter",
    [
        ("snapkv", "snapkv", "uniform", False),
        ("snapkv+adakv", "snapkv", "adakv", False),
        ("snapkv+lukv", "snapkv", "lukv", True),
        ("lookahead", "lookahead", "uniform", True),
        ("lookahead+pyramid", "lookahead", "pyramid", True),
        ("streaming+", "streaming", "uniform", False),
    ],
)
def test_cache_configuration_parses_scorer_and_allocation(config, scorer, allocation, adapter):
    method = cache_configuration(config)
    assert method == CacheMethod(scorer, allocation)
    assert method.needs_adapter is adapter


def test_method_names_and_configurations_agree_where_they_name_the_same_cache():
    for name, method in METHODS.items():
        if isinstance(method, CacheMethod) and name in ("streaming", "knorm", "random", "snapkv", "lookahead"):
            assert cache_configuration(name) == method
    assert [name for name in METHODS if needs_adapter(name)] == [
        "lukv",
        "lookahead",
        "lookahead-adakv",
        "lookahead-lukv",
        "lookahead-window",
    ]
    with pytest.raises(ValueError, match="Unknown evaluation method 'snapkv\\+adakv'"):
        needs_adapter("snapkv+adakv")


def test_benchmark_caches_come_from_the_shared_vocabulary():
    assert benchmark.FULL is methods.FULL == FULL == "full"
    assert isinstance(benchmark.new_cache(FULL, 64), DynamicCache)
    cache = benchmark.new_cache("snapkv+adakv", 64)
    assert isinstance(cache, LookaheadCache)
    assert (cache.cache_config.budget, cache.cache_config.scorer, cache.cache_config.allocation) == (
        64,
        "snapkv",
        "adakv",
    )
