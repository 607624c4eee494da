"""LU-KV's offline profiling: per-head prune ratios of a model and scorer, computed once, read by `lukv`."""

from .profile import HeadProfile, profile_names

__all__ = ["HeadProfile", "profile_names"]
