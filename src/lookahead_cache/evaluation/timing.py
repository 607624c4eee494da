"""Timed greedy generation, split into prefill and decode, shared by the demo and the benchmark.

`model.generate` reports neither the time to first token nor the per-token decode time, and it hides the
cache between the two phases. `timed_generation` runs the same greedy loop by hand: one forward over the
prompt with the cache, then one forward per new token, each fed the previous argmax and left to take its
position from the cache, as `generate` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import os
import statistics
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from peft import PeftModel
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.cache_utils import Cache

from ..cache import LookaheadCache
from ..prefill import CACHE_ARGUMENT


@dataclass
class TimedGeneration:
    """What one greedy generation produced and cost.

    Attributes:
        tokens: The generated token ids (the prompt excluded), up to and including an end-of-sequence token.
        prompt_tokens: Length of the prompt.
        prefill_seconds: Time to first token: the prompt forward and the first argmax.
        decode_seconds: Time of each later token's forward and argmax.
        kept_prompt_tokens: Prompt tokens stored per layer and KV head right after prefill, on average.
        kv_bytes_after_prefill: Bytes of keys and values held right after prefill (after eviction).
        kv_bytes_after_generation: The same after the last new token.
        peak_kv_bytes: The most key and value bytes held at once during prefill.
        peak_prefill_memory_bytes: Peak memory during the prefill forward above the memory held just before it
            (see `PrefillMemory`); None when it was not measured or cannot be on this platform.
    """

    tokens: list[int]
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: list[float]
    kept_prompt_tokens: float
    kv_bytes_after_prefill: int
    kv_bytes_after_generation: int
    peak_kv_bytes: int
    peak_prefill_memory_bytes: int | None

    @property
    def decode_ms_per_token(self) -> float:
        """Median decode step in milliseconds (robust to the odd slow step); NaN when no step ran."""
        return 1000 * statistics.median(self.decode_seconds) if self.decode_seconds else float("nan")


def median_prefill_ratio(runs: list[TimedGeneration], baseline_runs: list[TimedGeneration]) -> float:
    """Median over rounds of a run's prefill time over the baseline's in the same round (1.06: 6% slower).

    Run the two interleaved, round by round: a round's pair then saw the machine in the same state (clock, other
    load), and the median sets aside a round that a burst of other load hit.
    """
    if len(runs) != len(baseline_runs):
        raise ValueError(f"Pair runs round by round: got {len(runs)} runs and {len(baseline_runs)} baseline runs.")
    return statistics.median(run.prefill_seconds / base.prefill_seconds for run, base in zip(runs, baseline_runs))


def kv_nbytes(cache: Cache) -> int:
    """Bytes held by the stored keys and values of any transformers `Cache`."""
    if isinstance(cache, LookaheadCache):
        return cache.nbytes()
    return sum(
        layer.keys.nbytes + layer.values.nbytes
        for layer in cache.layers
        if layer.is_initialized and layer.keys is not None
    )


def stored_prompt_tokens(cache: Cache) -> float:
    """Tokens stored per layer and KV head, on average (padding slots of a LookaheadCache excluded)."""
    if isinstance(cache, LookaheadCache):
        return cache.kept_tokens().float().mean().item()
    return statistics.fmean(layer.keys.shape[-2] for layer in cache.layers if layer.is_initialized)


class _WallClock:
    def mark(self) -> float:
        return time.perf_counter()

    def seconds(self, start: float, end: float) -> float:
        return end - start


class _CudaClock:
    """Times the GPU stream with events, so that asynchronous kernel launches are not mistaken for work done."""

    def mark(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        end.synchronize()
        return start.elapsed_time(end) / 1000


class PrefillMemory:
    """Peak memory of a block of code above the memory held when it starts.

    On CUDA this is exact: `torch.cuda.max_memory_allocated` after a reset, minus what was allocated before.

    On CPU it is approximate: a background thread reads the resident set size (RSS) from `/proc/self/statm`
    about every millisecond. It misses peaks shorter than a sample, counts memory the allocator keeps after
    freeing it, and sees nothing of memory that was freed earlier but is still mapped (freed memory is handed
    back to the OS with `malloc_trim` before the block, where glibc provides it, to keep that small). On
    platforms without `/proc/self/statm` the peak is None.
    """

    _STATM = "/proc/self/statm"

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._baseline = 0
        self._peak = 0

    def __enter__(self) -> PrefillMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
        elif os.path.exists(self._STATM):
            _release_freed_memory()
            self._baseline = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device) - self._baseline
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._peak, _rss_bytes()) - self._baseline

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self._peak = max(self._peak, _rss_bytes())


def _rss_bytes() -> int:
    with open(PrefillMemory._STATM, "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's `malloc_trim`, or None on other C libraries."""
    libc_name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(libc_name), "malloc_trim", None) if libc_name else None


def _release_freed_memory() -> None:
    gc.collect()
    if _malloc_trim() is not None:
        _malloc_trim()(0)


def _prefill(model: PreTrainedModel, input_ids: torch.Tensor, cache: Cache) -> torch.Tensor:
    """The prompt forward into `cache` and the first generated token, `[1, 1]`."""
    # logits_to_keep=1: the other prompt positions' logits are never used, and at vocabulary size they would dwarf
    # the KV cache in memory (generate does the same).
    logits = model(input_ids=input_ids, **{CACHE_ARGUMENT: cache}, use_cache=True, logits_to_keep=1).logits
    return logits[:, -1].argmax(-1, keepdim=True)


@torch.no_grad()
def timed_generation(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    cache: Cache,
    new_tokens: int,
    *,
    eos_token_id: int | list[int] | None = None,
    measure_memory: bool = False,
    progress: bool = False,
) -> TimedGeneration:
    """Greedy generation of up to `new_tokens` tokens from `input_ids` (`[1, prompt_len]`) into `cache`.

    The tokens are those of `model.generate(input_ids, do_sample=False, cache=cache)` (`past_key_values=` before
    transformers 5.24; see `CACHE_ARGUMENT`) with the same `max_new_tokens` and end-of-sequence tokens. Generation
    stops early after an `eos_token_id`; pass None to always run `new_tokens` steps, as a benchmark wants.

    Args:
        model: A causal LM.
        input_ids: One prompt, on the model's device.
        cache: An empty cache (`DynamicCache`, `LookaheadCache`, ...); it holds the whole sequence afterwards.
        new_tokens: Tokens to generate (the first comes from the prefill, each later one from a decode step).
        eos_token_id: End-of-sequence token id(s).
        measure_memory: Measure the peak memory of the prefill forward (see `PrefillMemory`).
        progress: Show a progress bar over the generated tokens (on stderr, removed when done). It is drawn and
            updated between the timed regions, so it adds nothing to the measured times.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must hold one prompt, shape [1, prompt_len]; got {tuple(input_ids.shape)}.")
    if new_tokens < 1:
        raise ValueError(f"new_tokens={new_tokens} must be at least 1.")
    if cache.get_seq_length() != 0:
        raise ValueError("timed_generation needs an empty cache: this one already holds tokens.")
    stop = set([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id or [])
    clock = _CudaClock() if input_ids.device.type == "cuda" else _WallClock()

    bar = tqdm(total=new_tokens, desc="generating", unit="token", leave=False, disable=not progress)
    memory = PrefillMemory(input_ids.device)
    with memory if measure_memory else contextlib.nullcontext():
        start = clock.mark()
        token = _prefill(model, input_ids, cache)
        end = clock.mark()
    prefill_seconds = clock.seconds(start, end)
    bar.update()
    kept_prompt_tokens = stored_prompt_tokens(cache)
    kv_bytes_after_prefill = kv_nbytes(cache)
    peak_kv_bytes = getattr(cache, "peak_nbytes", kv_bytes_after_prefill)

    # PeftModel.generate hands its decoding loop to the model it wraps, whose forward skips PEFT's per-call aLoRA
    # bookkeeping (an invocation search and a pre-hook registered on every LoRA layer, each step); so do we.
    step_model = model.get_base_model() if isinstance(model, PeftModel) else model
    tokens = [token]
    marks = []
    while len(tokens) < new_tokens and not (stop and int(tokens[-1]) in stop):
        start = clock.mark()
        logits = step_model(input_ids=tokens[-1], **{CACHE_ARGUMENT: cache}, use_cache=True).logits
        tokens.append(logits[:, -1].argmax(-1, keepdim=True))
        marks.append((start, clock.mark()))
        bar.update()
    bar.close()
    return TimedGeneration(
        tokens=torch.cat(tokens, dim=-1)[0].tolist(),
        prompt_tokens=input_ids.shape[-1],
        prefill_seconds=prefill_seconds,
        decode_seconds=[clock.seconds(start, end) for start, end in marks],
        kept_prompt_tokens=kept_prompt_tokens,
        kv_bytes_after_prefill=kv_bytes_after_prefill,
        kv_bytes_after_generation=kv_nbytes(cache),
        peak_kv_bytes=peak_kv_bytes,
        peak_prefill_memory_bytes=memory.peak_bytes,
    )


def _attention_flops(query_shape, key_shape, value_shape, is_causal: bool) -> int:
    """Multiply-adds (x2) of an attention call: query-key logits and the weighted sum of values, over the (query,
    key) pairs the kernel computes; a causal call skips the pairs above the diagonal (aligned top-left, as SDPA)."""
    batch, query_heads, queries, head_dim = query_shape
    keys, value_dim = key_shape[-2], value_shape[-1]
    if not is_causal:
        pairs = queries * keys
    else:  # query i sees keys 0..i
        seen_in_full = max(queries - keys, 0)
        pairs = min(queries, keys) * (min(queries, keys) + 1) // 2 + seen_in_full * keys
    return 2 * batch * query_heads * pairs * (head_dim + value_dim)


def _attention_formula(is_causal_index: int):
    def formula(query, key, value, *args, out_shape=None, **kwargs) -> int:
        positional = (query, key, value, *args)
        is_causal = kwargs.get("is_causal", positional[is_causal_index] if len(positional) > is_causal_index else False)
        return _attention_flops(query, key, value, bool(is_causal))

    return formula


# torch's own table has no entry for SDPA's CPU kernel and counts causal calls as dense; the index is `is_causal`'s.
_ATTENTION_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _attention_formula(4),
    torch.ops.aten._scaled_dot_product_flash_attention: _attention_formula(4),
    torch.ops.aten._scaled_dot_product_efficient_attention: _attention_formula(6),
    torch.ops.aten._scaled_dot_product_cudnn_attention: _attention_formula(6),
}


@torch.no_grad()
def prefill_flops(model: PreTrainedModel, input_ids: torch.Tensor, cache: Cache) -> int:
    """Floating-point operations of the prompt forward into `cache` and its first argmax, as `timed_generation`
    runs it: every matrix product (linear layers, LoRA, scoring) and every attention call (its query-key and
    value products over the pairs it computes). Elementwise work (norms, softmax, pooling, top-k) is not counted,
    nor are Triton kernels (on a GPU, the scoring kernel and the varlen decode kernel): they are not torch ops.

    Unlike a time, the count does not move with the machine's load, so it gives the compute that a configuration
    adds to a prefill exactly (e.g. the lookahead rows' share of a 2048-token prompt).
    """
    with FlopCounterMode(display=False, custom_mapping=_ATTENTION_FORMULAS) as counter:
        _prefill(model, input_ids, cache)
    return counter.get_total_flops()
