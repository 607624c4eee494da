"""Triton kernels, each beside its torch reference (used where Triton is absent or the tensors are not on a GPU)
and its benchmark (`python -m lookahead_cache.kernels.benchmark_<kernel>`); their tests are in `tests/`."""
