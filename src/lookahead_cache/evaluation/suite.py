"""`lookahead-cache eval`: every method side by side on the offline long-context suite.

For each sample and mode the prompt is prefilled once (`record_prefill`); the full cache answers first, then
every method and budget compresses a copy of that prefill and answers greedily. Rows go to
`OUT/predictions.jsonl` as they are produced, so an interrupted run resumes where it stopped. The samples
themselves go to `OUT/samples.jsonl` (token ids included), which the kvpress runner in `scripts/kvpress/` reads.
At the end the report (`OUT/summary.md`, plots, and optionally a results page) is written from all rows.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import torch
import transformers
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from ..adapters import get_lookahead, load_lookahead
from ..cache import LookaheadCache
from ..cli import require_extra
from ..commands.eval import DEFAULT_MODEL, SIZES
from ..default_model import DEFAULT_ADAPTER_DIR, DEFAULT_MODEL_FILE, load_default_model
from . import report
from .methods import (
    FULL,
    CacheMethod,
    SampleRun,
    get_method,
    needs_adapter,
    scores_with_lookahead,
)
from .metrics import score
from .replay import record_prefill
from .tasks import TASKS, Sample, get_task
from .timing import kv_nbytes, stored_prompt_tokens

logger = logging.get_logger(__name__)


def check_arguments(args: argparse.Namespace) -> None:
    require_extra("eval", "evaluate", "matplotlib")
    size = SIZES[args.size]
    args.budgets = tuple(args.budgets or size.budgets)
    args.lengths = tuple(args.lengths or size.lengths)
    args.samples = args.samples or size.samples
    args.modes = tuple(args.modes or size.modes)
    args.tasks = tuple(args.tasks or TASKS)
    for name in args.tasks:
        get_task(name)
    for name in args.methods:
        get_method(name)
    if FULL not in args.methods:
        raise ValueError("--methods must include 'full': it is the reference, and the oracle needs its answer.")
    if any(needs_adapter(name) for name in args.methods) and args.adapter is None and args.model != DEFAULT_MODEL:
        raise ValueError(
            "--methods lookahead, lookahead-* and lukv with a --model of your own need --adapter (its lookahead "
            "adapter, beside which the LU-KV profiles lie)."
        )
    for budget in args.budgets:
        LookaheadCache(budget=budget, scorer="streaming")


def load_model(name: str, adapter: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model to evaluate, with its lookahead adapter when `adapter` is given ("default": the shipped one)."""
    if name == DEFAULT_MODEL:
        model, tokenizer = load_default_model()
    elif not Path(name).is_dir():
        raise ValueError(f"--model {name!r} is neither '{DEFAULT_MODEL}' nor a local model directory.")
    else:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="sdpa").eval()
    if adapter is not None:
        model = load_lookahead(model, DEFAULT_ADAPTER_DIR if adapter == DEFAULT_MODEL else adapter, tokenizer=tokenizer)
    return model, tokenizer


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    adapter = args.adapter or (DEFAULT_MODEL if any(needs_adapter(name) for name in args.methods) else None)
    model, tokenizer = load_model(args.model, adapter)
    for name in args.methods:
        method = get_method(name)
        if isinstance(method, CacheMethod):
            method.check(model)
    samples = build_samples(tokenizer, args.tasks, args.lengths, args.samples, args.seed)
    write_samples(args.out / "samples.jsonl", samples, tokenizer)
    _write_settings(args, model)
    started = time.perf_counter()
    evaluate_samples(model, tokenizer, samples, args.methods, args.budgets, args.modes, args.out / "predictions.jsonl")
    logger.info(f"Evaluation took {time.perf_counter() - started:.0f} s.")
    summary = report.summarize(report.load_rows(args.out))
    (args.out / "summary.md").write_text(report.markdown_summary(summary) + "\n")
    report.plot_accuracy_vs_budget(summary, args.out / "figures")
    if args.results_page is not None:
        report.write_results_page(args.out, args.results_page, command=_command_line(args))
        logger.info(f"Wrote {args.results_page}")
    print(report.markdown_summary(summary))
    return 0


def build_samples(
    tokenizer: PreTrainedTokenizerBase, tasks: tuple[str, ...], lengths: tuple[int, ...], samples: int, seed: int
) -> list[Sample]:
    built = []
    for length in lengths:
        for name in tasks:
            built.extend(get_task(name).build(tokenizer, length, samples, seed))
    return built


def write_samples(path: Path, samples: list[Sample], tokenizer: PreTrainedTokenizerBase) -> None:
    """The samples with their token ids, split where the question begins (read by the kvpress runner)."""
    with path.open("w") as file:
        for sample in samples:
            context_ids, question_ids = sample.prompt_ids(tokenizer)
            record = {
                "sample_id": sample.id,
                "family": sample.family,
                "context_length": sample.context_length,
                "context_ids": context_ids[0].tolist(),
                "question_ids": question_ids[0].tolist(),
                "answers": list(sample.answers),
                "metric": sample.metric,
                "max_new_tokens": sample.max_new_tokens,
            }
            file.write(json.dumps(record) + "\n")


def evaluate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: list[Sample],
    methods: list[str],
    budgets: tuple[int | float, ...],
    modes: tuple[str, ...],
    predictions_path: Path,
) -> None:
    """Run every (method, budget) on every sample and mode, appending rows to `predictions_path` (resumable).

    Rows of methods that score with the lookahead adapter record its fingerprint; resuming with another adapter
    is refused, so a table never mixes the answers of two adapters.
    """
    adapter = get_lookahead(model)
    fingerprint = adapter.fingerprint()[:16] if adapter is not None else None
    rows = (
        report.load_rows(predictions_path.parent)
        if predictions_path.exists() and predictions_path.stat().st_size
        else []
    )
    _check_adapter_of_done_rows(rows, predictions_path, methods, fingerprint)
    done = {(row["sample_id"], row["mode"], row["method"], row["budget"]) for row in rows}
    configs = [(FULL, None)] + [(method, budget) for method in methods if method != FULL for budget in budgets]
    progress = tqdm(total=len(samples) * len(modes) * len(configs), desc="eval", unit="answer")
    with predictions_path.open("a") as file:
        for sample in samples:
            for mode in modes:
                todo = [c for c in configs if (sample.id, mode, *c) not in done]
                progress.update(len(configs) - len(todo))
                if not todo:
                    continue
                progress.set_postfix(sample=sample.id, mode=mode)
                for row in _evaluate_sample(model, tokenizer, sample, mode, todo, progress):
                    if scores_with_lookahead(row["method"]):
                        row["adapter"] = fingerprint
                    file.write(json.dumps(row) + "\n")
                    file.flush()
    progress.close()


def start_run(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sample: Sample, mode: str) -> SampleRun:
    """The recorded prefill of `sample` in `mode`: context and question when question-aware, else the context."""
    context_ids, question_ids = sample.prompt_ids(tokenizer)
    if mode == "question-aware":
        prefilled_ids, question_ids = torch.cat([context_ids, question_ids], dim=-1), question_ids[:, :0]
    else:
        prefilled_ids = context_ids
    return SampleRun(
        model=model,
        prefilled_ids=prefilled_ids,
        question_ids=question_ids,
        recording=record_prefill(model, prefilled_ids),
        max_new_tokens=sample.max_new_tokens,
        eos_token_id=model.generation_config.eos_token_id,
    )


def _evaluate_sample(model, tokenizer, sample: Sample, mode: str, configs, progress):
    run = start_run(model, tokenizer, sample, mode)
    prompt_tokens = run.prefilled_ids.shape[-1] + run.question_ids.shape[-1]

    def row(method: str, budget, footprint: tuple[float, int], compress_s: float, answer_ids: torch.Tensor):
        """One prediction row; `footprint` is the cache's (kept tokens, KV bytes) before it answered, since a cache
        that decodes alone (not stacked with others) grows by the answer."""
        prediction = tokenizer.decode(answer_ids[0], skip_special_tokens=True).strip()
        return {
            "sample_id": sample.id,
            "family": sample.family,
            "context_length": sample.context_length,
            "mode": mode,
            "method": method,
            "budget": budget,
            "prompt_tokens": prompt_tokens,
            "kept_tokens": footprint[0],
            "prediction": prediction,
            "answers": list(sample.answers),
            "metric": sample.metric,
            "score": score(sample.metric, [prediction], [list(sample.answers)])[0],
            "prefill_s": run.recording.seconds,
            "compress_s": compress_s,
            "kv_bytes": footprint[1],
        }

    # The full answer comes first, even when its row exists already if the oracle still needs it.
    if (FULL, None) in configs or any(method == "oracle" for method, _ in configs):
        start = time.perf_counter()
        cache = get_method(FULL)(run, None)
        compress_s = time.perf_counter() - start
        footprint = _footprint(cache)
        run.full_answer_ids = run.answer(cache)
        if (FULL, None) in configs:
            yield row(FULL, None, footprint, compress_s, run.full_answer_ids)
            progress.update()
    # The methods of one budget answer in one batch: decoding costs little more than for one of them.
    budgets = dict.fromkeys(budget for method, budget in configs if method != FULL)
    for budget in budgets:
        built = []
        for method in [method for method, b in configs if method != FULL and b == budget]:
            start = time.perf_counter()
            cache = get_method(method)(run, budget)
            built.append((method, cache, time.perf_counter() - start))
        footprints = [_footprint(cache) for _, cache, _ in built]
        answers = run.answers([cache for _, cache, _ in built])
        for (method, _, compress_s), footprint, answer_ids in zip(built, footprints, answers):
            yield row(method, budget, footprint, compress_s, answer_ids)
        progress.update(len(built))


def _footprint(cache) -> tuple[float, int]:
    """Prompt tokens a cache stores per layer and KV head, and its KV bytes."""
    return stored_prompt_tokens(cache), kv_nbytes(cache)


def _check_adapter_of_done_rows(rows: list[dict], path: Path, methods: list[str], fingerprint: str | None) -> None:
    others = {
        (row["method"], row.get("adapter"))
        for row in rows
        if row["method"] in methods and scores_with_lookahead(row["method"]) and row.get("adapter") != fingerprint
    }
    if others:
        listed = ", ".join(
            f"{method} (adapter {adapter or 'not recorded'})" for method, adapter in sorted(others, key=str)
        )
        raise ValueError(
            f"{path} holds rows made with another lookahead adapter than this run's ({fingerprint}): {listed}. "
            "Evaluate into another --out, or remove those methods' rows to rerun them with this adapter."
        )


def _write_settings(args: argparse.Namespace, model: PreTrainedModel) -> None:
    """Record what ran; a later run into the same directory adds its methods, budgets, ... to the lists, and
    where its environment differs (a newer transformers, another day) lists both values, so that rows kept from
    the earlier run are not credited to the later environment."""
    path = args.out / "settings.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    settings = {
        "model": DEFAULT_MODEL_FILE if args.model == DEFAULT_MODEL else args.model,
        "size": args.size,
        "tasks": list(args.tasks),
        "lengths": list(args.lengths),
        "samples_per_task_and_length": args.samples,
        "methods": list(args.methods),
        "budgets": list(args.budgets),
        "modes": list(args.modes),
        "seed": args.seed,
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": date.today().isoformat(),
    }
    for key, value in settings.items():
        if key not in previous or previous[key] == value:
            continue
        earlier = previous[key] if isinstance(previous[key], list) else [previous[key]]
        settings[key] = earlier + [
            item for item in (value if isinstance(value, list) else [value]) if item not in earlier
        ]
    path.write_text(json.dumps(settings, indent=2) + "\n")


def _command_line(args: argparse.Namespace) -> str:
    parts = ["lookahead-cache eval", f"--model {args.model}", f"--size {args.size}", f"--out {args.out}"]
    parts.append("--methods " + " ".join(args.methods))
    parts.append("--tasks " + " ".join(args.tasks))
    parts.append("--lengths " + " ".join(map(str, args.lengths)))
    parts.append("--budgets " + " ".join(map(str, args.budgets)))
    parts.append(f"--samples {args.samples} --modes " + " ".join(args.modes) + f" --seed {args.seed}")
    if args.results_page is not None:
        parts.append(f"--results-page {args.results_page}")
    return " ".join(parts)
