"""`lookahead-cache demo`: a needle-in-a-haystack question answered with and without eviction, side by side.

The embedded SmolLM2-135M-Instruct reads a long document of Python's own documentation with one sentence
hidden in it ("The secret code for the blue door is 4821."), then is asked for the code. It answers twice,
greedily: with a full `DynamicCache` and with a `LookaheadCache`, whose answer shows what eviction kept.
Runs offline on CPU.
"""

from __future__ import annotations

import argparse

from transformers import DynamicCache, PreTrainedTokenizerBase
from transformers.utils import logging

from .attention import VARLEN_ATTENTION
from .cache import LookaheadCache
from .default_model import DEFAULT_MODEL_FILE, load_default_model
from .evaluation.benchmark import MIB, markdown_table
from .evaluation.documents import QUESTION, build_needle_task
from .evaluation.timing import TimedGeneration, timed_generation

logger = logging.get_logger(__name__)

# Enough to warm up kernels and the allocator before the first timed prefill, which would otherwise pay for it.
WARM_UP_PROMPT_TOKENS = 64


def check_arguments(args: argparse.Namespace) -> None:
    """Let the cache validate budget and scorer before the model is loaded."""
    LookaheadCache(budget=args.budget, scorer=args.scorer, allocation=args.allocation)
    if isinstance(args.budget, int) and args.budget >= args.context_tokens:
        logger.warning(
            f"--budget {args.budget} covers the whole {args.context_tokens}-token prompt: nothing is evicted."
        )


def run(args: argparse.Namespace) -> int:
    logger.info(f"Loading {DEFAULT_MODEL_FILE} ...")
    # The LU-KV profiles lie beside the lookahead adapter, so lukv needs it loaded too. lookahead_varlen is SDPA but
    # for decoding per-head budgets, which it reads in place.
    model, tokenizer = load_default_model(
        attn_implementation=VARLEN_ATTENTION, lookahead=args.scorer == "lookahead" or args.allocation == "lukv"
    )
    task = build_needle_task(tokenizer, args.context_tokens, args.seed)
    input_ids = task.prompt_ids(tokenizer)
    eos_token_id = model.generation_config.eos_token_id

    timed_generation(model, input_ids[:, :WARM_UP_PROMPT_TOKENS], DynamicCache(), 2)
    label = f"LookaheadCache(budget={args.budget}, scorer={args.scorer!r}, allocation={args.allocation!r})"
    results: dict[str, TimedGeneration] = {}
    for name, cache in [
        ("DynamicCache (full)", DynamicCache()),
        (label, LookaheadCache(budget=args.budget, scorer=args.scorer, allocation=args.allocation)),
    ]:
        logger.info(f"Answering with {name} ...")
        results[name] = timed_generation(model, input_ids, cache, args.max_new_tokens, eos_token_id=eos_token_id)

    print(
        f"Document: {input_ids.shape[-1]} prompt tokens of Python documentation (seed {args.seed}); needle at "
        f"{task.depth:.0%} depth: {task.needle!r}\nQuestion: {QUESTION}\n"
    )
    print(format_comparison(results, tokenizer, task.code))
    return 0


def format_comparison(results: dict[str, TimedGeneration], tokenizer: PreTrainedTokenizerBase, code: str) -> str:
    """The generations as a markdown table, one column per cache."""
    answers = {name: tokenizer.decode(r.tokens, skip_special_tokens=True).strip() for name, r in results.items()}
    rows = {
        "answer": [_cell(answers[name]) for name in results],
        f"code {code} in answer": ["yes" if code in answers[name] else "no" for name in results],
        "prompt tokens": [str(r.prompt_tokens) for r in results.values()],
        "prompt tokens kept per KV head": [f"{r.kept_prompt_tokens:.0f}" for r in results.values()],
        "KV cache after generation (MiB)": [f"{r.kv_bytes_after_generation / MIB:.1f}" for r in results.values()],
        "peak KV cache in prefill (MiB)": [f"{r.peak_kv_bytes / MIB:.1f}" for r in results.values()],
        "prefill = time to first token (s)": [f"{r.prefill_seconds:.2f}" for r in results.values()],
        "decode (ms/token, median)": [f"{r.decode_ms_per_token:.1f}" for r in results.values()],
    }
    return markdown_table(["", *results], [[name, *cells] for name, cells in rows.items()])


def _cell(text: str) -> str:
    # One table row per answer: show line breaks and pipes instead of letting them break the table.
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("|", "\\|")
