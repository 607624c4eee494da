"""Triton kernels, each beside its torch reference, its test and its benchmark.

Installed as `lookahead_cache.kernels`.
"""
