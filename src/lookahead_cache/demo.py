"""`lookahead-cache demo`: a needle-in-a-haystack question answered with and without eviction, side by side.

The embedded SmolLM2-135M-Instruct reads a long document of Python's own documentation with one sentence
hidden in it ("The secret code for the blue door is 4821."), then is asked for the code. It answers greedily
with a full `DynamicCache` and with a `LookaheadCache`, whose answer shows what eviction kept. After a warm-up,
both answer once per round, taking turns to go first, and the table gives the medians over rounds; the prefill
overhead is the median of each round's ratio, as `lookahead-cache bench` gives it. Runs offline on CPU.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

from transformers import DynamicCache, PreTrainedTokenizerBase
from transformers.cache_utils import Cache
from transformers.utils import logging

from .cache import LookaheadCache
from .decoding import VARLEN_ATTENTION
from .default_model import load_default_model
from .evaluation.benchmark import WARM_UP_TOKENS
from .evaluation.documents import QUESTION, build_needle_task
from .evaluation.report.tables import MIB, markdown_table
from .evaluation.timing import TimedGeneration, median_prefill_ratio, timed_generation
from .scorers import scorer_name

logger = logging.get_logger(__name__)

FULL_CACHE_LABEL = "DynamicCache (full)"


def check_arguments(args: argparse.Namespace) -> None:
    """Let the cache validate budget and scorer before the model is loaded."""
    LookaheadCache(budget=args.budget, scorer=args.scorer, allocation=args.allocation)
    if isinstance(args.budget, int) and args.budget >= args.context_tokens:
        logger.warning(
            f"--budget {args.budget} covers the whole {args.context_tokens}-token prompt: nothing is evicted."
        )


def run(args: argparse.Namespace) -> int:
    # auto resolves to the lookahead scorer only on a model with an adapter, and the LU-KV profiles lie beside the
    # adapter. lookahead_varlen is SDPA but for decoding per-head budgets, which it reads in place.
    model, tokenizer = load_default_model(
        attn_implementation=VARLEN_ATTENTION,
        lookahead=args.scorer in ("auto", "lookahead") or args.allocation == "lukv",
    )
    task = build_needle_task(tokenizer, args.context_tokens, args.seed)
    input_ids = task.prompt_ids(tokenizer)

    def new_lookahead_cache() -> LookaheadCache:
        return LookaheadCache(budget=args.budget, scorer=args.scorer, allocation=args.allocation)

    def generate(cache: Cache, new_tokens: int) -> TimedGeneration:
        return timed_generation(
            model,
            input_ids,
            cache,
            new_tokens,
            eos_token_id=model.generation_config.eos_token_id,
            progress=True,
        )

    # One untimed run of each cache on the whole prompt: the first pays for kernels, allocator and scoring setup.
    logger.info("Warming up both caches ...")
    generate(DynamicCache(), WARM_UP_TOKENS)
    warm_up_cache = new_lookahead_cache()
    generate(warm_up_cache, WARM_UP_TOKENS)
    label = lookahead_label(args, warm_up_cache)

    new_caches: dict[str, Callable[[], Cache]] = {FULL_CACHE_LABEL: DynamicCache, label: new_lookahead_cache}
    runs: dict[str, list[TimedGeneration]] = {name: [] for name in new_caches}
    for round_index in range(args.rounds):
        # Taking turns to go first, so that neither cache always runs on a machine the other has just warmed.
        order = list(new_caches) if round_index % 2 == 0 else list(reversed(new_caches))
        for name in order:
            logger.info(f"Round {round_index + 1}/{args.rounds}: answering with {name} ...")
            runs[name].append(generate(new_caches[name](), args.max_new_tokens))

    print(
        f"Document: {input_ids.shape[-1]} prompt tokens of Python documentation (seed {args.seed}); needle at "
        f"{task.depth:.0%} depth: {task.needle!r}\nQuestion: {QUESTION}\n"
    )
    print(format_comparison(runs, tokenizer, task.code))
    print(
        f"\nTimes are medians over {args.rounds} rounds after a warm-up, each round running both caches (taking turns "
        "to go first).\nPrefill overhead: the median of each round's LookaheadCache prefill time over the full "
        "cache's, on this machine;\nthe machine's other load is not measured and moves all times. "
        "`lookahead-cache bench` measures more carefully."
    )
    return 0


def lookahead_label(args: argparse.Namespace, cache: LookaheadCache) -> str:
    """The LookaheadCache column's title, naming the scorer that ran (what `auto` resolved to) once it has run."""
    ran = scorer_name(cache.scorer)
    scorer = f"'auto' -> {ran}" if args.scorer == "auto" else repr(ran)
    return f"LookaheadCache(budget={args.budget}, scorer={scorer}, allocation={args.allocation!r})"


def format_comparison(runs: dict[str, list[TimedGeneration]], tokenizer: PreTrainedTokenizerBase, code: str) -> str:
    """The generations as a markdown table, one column per cache: the full cache's first, then LookaheadCache's.

    Greedy answers and cache sizes are the same in every round, so they come from the first; times are medians
    over rounds, and the prefill overhead is paired by round (`median_prefill_ratio`).
    """
    firsts = [results[0] for results in runs.values()]
    answers = [tokenizer.decode(first.tokens, skip_special_tokens=True).strip() for first in firsts]
    full_runs = runs[FULL_CACHE_LABEL]
    rows = {
        "answer": [_cell(answer) for answer in answers],
        f"code {code} in answer": ["yes" if code in answer else "no" for answer in answers],
        "prompt tokens": [str(first.prompt_tokens) for first in firsts],
        "prompt tokens kept per KV head": [f"{first.kept_prompt_tokens:.0f}" for first in firsts],
        "KV cache after generation (MiB)": [f"{first.kv_bytes_after_generation / MIB:.1f}" for first in firsts],
        "peak KV cache in prefill (MiB)": [f"{first.peak_kv_bytes / MIB:.1f}" for first in firsts],
        "prefill = time to first token (s)": [
            f"{statistics.median(r.prefill_seconds for r in results):.2f}" for results in runs.values()
        ],
        "prefill overhead over full cache": [
            "-" if results is full_runs else f"{100 * (median_prefill_ratio(results, full_runs) - 1):+.1f}%"
            for results in runs.values()
        ],
        "decode (ms/token)": [
            f"{statistics.median(r.decode_ms_per_token for r in results):.1f}" for results in runs.values()
        ],
    }
    return markdown_table(["", *runs], [[name, *cells] for name, cells in rows.items()])


def _cell(text: str) -> str:
    # One table row per answer: show line breaks and pipes instead of letting them break the table.
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("|", "\\|")
