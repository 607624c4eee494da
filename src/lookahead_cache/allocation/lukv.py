from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from ..adapters.config import BaseModelSignature
from ..adapters.model import get_lookahead
from ..config import LookaheadCacheConfig
from ..profiling.profile import HeadProfile, check_scope
from ..scorers import Scorer, scorer_defaults, scorer_name, scorer_settings
from .base import Allocator


class LUKVAllocator(Allocator):
    """LU-KV: per-head budgets from an offline profile of each head's marginal utility, solved over all heads.

    The profile (`lookahead-cache profile`) holds, for global prune ratios of 1 % to 99 %, the share of the prompt
    each (layer, KV head) evicts. For a prompt of T tokens and a budget of B per head, the row of ratio 1 - B/T
    gives every head its count, (1 - r_h) * T, scaled so the whole model keeps exactly B per head on average, never
    fewer than the sink and window. Layers keep different totals; only the model's total matches `uniform` (with
    `scope="layer"`, each layer's total does).

    Tang et al., "Predicting Future Utility: Global Combinatorial Optimization for Task-Agnostic KV Cache
    Eviction", https://arxiv.org/abs/2602.08585

    Args:
        profile: A `HeadProfile`, or a local folder / Hub repo holding one for the cache's scorer. Default: the
            profile shipped beside the model's lookahead adapter (`load_lookahead`, `load_default_model`).
        revision: Revision of a Hub repo `profile`.
        scope: "model" (default): the budget is the whole model's, layers keep different totals as the profile's
            global solution has them; "layer": every layer keeps the budget, shared among its heads by the
            profile (see `HeadProfile.keep_counts`).
    """

    per_head = True

    def __init__(
        self,
        profile: HeadProfile | str | Path | None = None,
        revision: str | None = None,
        scope: Literal["model", "layer"] = "model",
    ):
        check_scope(scope)
        self.profile = profile if isinstance(profile, HeadProfile) else None
        self._source = None if isinstance(profile, HeadProfile) else profile
        self._revision = revision
        self.scope = scope
        self._counts: dict[tuple[int, int, int], torch.Tensor] = {}

    def bind(self, attention_module: nn.Module, scorer: Scorer, cache_config: LookaheadCacheConfig) -> None:
        name, settings = scorer_name(scorer), scorer_settings(scorer)
        if self.profile is None:
            self.profile = self._load(attention_module, name)
        profiled = (self.profile.sink, self.profile.window)
        if profiled != (cache_config.sink, cache_config.window):
            raise ValueError(
                f"The LU-KV profile was made with sink={profiled[0]}, window={profiled[1]}, but the cache protects "
                f"sink={cache_config.sink}, window={cache_config.window}: its head budgets share out other tokens. "
                f"Create the cache with sink={profiled[0]}, window={profiled[1]}, or profile these settings "
                f"(`lookahead-cache profile --sink {cache_config.sink} --window {cache_config.window}`)."
            )
        if self.profile.scorer != name:
            raise ValueError(
                f"The LU-KV profile was made for scorer {self.profile.scorer!r}, but the cache scores with {name!r}: "
                f"profile that scorer (`lookahead-cache profile --scorers {name}`) or use "
                f"scorer={self.profile.scorer!r}."
            )
        # Profiles saved before scorer settings were recorded carry none, and are taken as they are; a setting
        # added to the scorer after a profile was saved had its default value then.
        recorded = self.profile.scorer_settings
        if recorded and {**scorer_defaults(scorer), **recorded} != settings:
            raise ValueError(
                f"The LU-KV profile was made with {name} settings {recorded}, but the cache's "
                f"scorer has {settings}: its head budgets follow another ranking. Score with the profile's settings, "
                "or profile these (`lookahead_cache.profiling.profiler.profile_model(..., scorers=[scorer])`)."
            )
        mismatches = self.profile.base_model.mismatches(BaseModelSignature.of(attention_module.config), label="profile")
        if mismatches:
            raise ValueError("The LU-KV profile was made for another model: " + "; ".join(mismatches))

    def _load(self, attention_module: nn.Module, scorer: str) -> HeadProfile:
        if self._source is not None:
            return HeadProfile.from_pretrained(self._source, scorer, revision=self._revision)
        return adapter_profile(attention_module, scorer)

    def allocate(self, scores, row_budgets, prompt_lengths, protected, layer_idx, num_layers) -> torch.Tensor:
        if self.profile is None:
            raise ValueError(
                "The lukv allocation has no profile yet: pass allocation_kwargs={'profile': folder_or_repo} or "
                "LUKVAllocator(profile=...) when the cache does not see the model (e.g. LookaheadCache.from_prefill)."
            )
        if len(self.profile.layers) != num_layers:
            raise ValueError(
                f"The LU-KV profile covers {len(self.profile.layers)} layers; this model compresses {num_layers}."
            )
        batch, kv_heads, _ = scores.shape
        if self.profile.prune_ratios.shape[-1] != kv_heads:
            raise ValueError(
                f"The LU-KV profile has {self.profile.prune_ratios.shape[-1]} KV heads per layer; this model "
                f"{kv_heads}."
            )
        counts = torch.empty(batch, kv_heads, dtype=torch.long)
        for row in range(batch):
            key = (int(prompt_lengths[row]), int(row_budgets[row]), protected)
            if key not in self._counts:
                self._counts[key] = self.profile.keep_counts(*key, scope=self.scope)
            counts[row] = self._counts[key][layer_idx]
        return counts.to(scores.device)


def adapter_profile(module: nn.Module, scorer: str) -> HeadProfile:
    """The LU-KV profile for `scorer` shipped beside the lookahead adapter of the model `module` belongs to."""
    adapter = get_lookahead(module)
    if adapter is None or adapter.source is None:
        raise ValueError(
            "allocation='lukv' needs a LU-KV profile: load the model with a lookahead adapter that ships one "
            "(lookahead_cache.load_default_model(lookahead=True) does), or pass "
            "allocation_kwargs={'profile': folder_or_repo} (made by `lookahead-cache profile`)."
        )
    # Read once per loaded adapter and scorer: a cache per `generate` call must not re-read (or re-download) it.
    if scorer not in adapter.profiles:
        adapter.profiles[scorer] = HeadProfile.from_pretrained(adapter.source, scorer, revision=adapter.source_revision)
    return adapter.profiles[scorer]
