"""`lookahead-cache eval`: every method side by side on the offline long-context suite.

For each sample and one-shot mode the prompt is prefilled once (`record_prefill`); the full cache answers first,
then every method and budget compresses a copy of that prefill and answers greedily. In the live modes (streaming
prefill read in chunks, sessions of three turns; `live`) every method and budget generates with a fresh cache of its
own instead, and its rows also record `peak_kv_bytes` (sessions: and `turn_tokens`; long answers, `long-output`:
`generation_budget`, `kept_after_answer` and `agreement`). Rows go to
`OUT/predictions.jsonl` as they are produced, so an interrupted run resumes where it stopped. The samples
themselves go to `OUT/samples.jsonl` (token ids included), which the kvpress runner in `scripts/kvpress/` reads.
At the end the report (`OUT/summary.md`, plots, and optionally a results page) is written from all rows.

A later call into the same OUT resumes it, and may add to it: more methods, budgets, modes, tasks, lengths or
samples (sample `i` of a family and length is the same whatever the count). What would change rows already there
is refused before anything is written: another model (its weights' fingerprint), another seed, another chunk size
for the chunked modes or generation budget for the long-output mode, a sample whose
tokens or answer length differ from the one recorded (another tokenizer, task code or Python version), or another
lookahead adapter or LU-KV profile for the methods that read them.
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
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from ..adapters import get_lookahead
from ..allocation.lukv import adapter_profile
from ..cache import LookaheadCache
from ..cli import require_extra
from ..commands.eval import CHUNKED_MODES, DEFAULT_MODEL, LONG_OUTPUT_MODE, SESSION_MODE, SIZES
from ..default_model import DEFAULT_MODEL_FILE
from ..model_loading import load_model
from ..run_folder import append_jsonl, check_same_run, model_fingerprint, read_json, read_jsonl, write_text
from ..training.forms import get_task
from . import report
from .live import LIVE_MODES, LiveRun, start_live_run
from .methods import (
    FULL,
    METHODS,
    CacheMethod,
    SampleRun,
    base_method,
    generation_budget_name,
    get_method,
    live_cache,
    live_refusal,
    needs_adapter,
    session_budget_name,
)
from .replay import record_prefill
from .tasks import SUITE_SPLIT, SUITE_TASKS, Sample, score_predictions
from .timing import kv_nbytes, stored_prompt_tokens

logger = logging.get_logger(__name__)


def check_arguments(args: argparse.Namespace) -> None:
    require_extra("eval", "evaluate", "matplotlib")
    size = SIZES[args.size]
    args.budgets = tuple(args.budgets or size.budgets)
    args.lengths = tuple(args.lengths or size.lengths)
    args.samples = args.samples or size.samples
    args.modes = tuple(args.modes or size.modes)
    args.tasks = tuple(args.tasks or SUITE_TASKS)
    for name in args.tasks:
        get_task(name)
    for name in args.methods:
        get_method(name)
    if args.streaming_factor < 1:
        raise ValueError(
            f"--streaming-factor {args.streaming_factor:g} must be at least 1: the chunks before the last keep that "
            "many times the budget, the last evicts to the budget. Pass 1 to evict every chunk to the budget."
        )
    if FULL not in args.methods:
        raise ValueError("--methods must include 'full': it is the reference, and the oracle needs its answer.")
    for budget in args.budgets:
        LookaheadCache(budget=budget, scorer="streaming")
    check_live_modes(args.modes, args.methods, args.budgets, args.generation_budget)
    if LONG_OUTPUT_MODE in args.modes:
        short = [name for name in args.tasks if get_task(name).max_new_tokens <= args.generation_budget]
        if short:
            logger.warning(
                f"--modes {LONG_OUTPUT_MODE}: the answers of {', '.join(short)} are at most --generation-budget "
                f"{args.generation_budget} tokens long, so their '@decode' rows never evict while decoding; the mode "
                "is made for code_continuation_long (1024 tokens)."
            )
    if any(needs_adapter(name) for name in args.methods) and args.adapter is None and args.model != DEFAULT_MODEL:
        raise ValueError(
            "--methods lookahead, lookahead-* and lukv with a --model of your own need --adapter (its lookahead "
            "adapter, beside which the LU-KV profiles lie)."
        )


def check_live_modes(
    modes: tuple[str, ...],
    methods: list[str],
    budgets: tuple[int | float, ...],
    generation_budget: int | None = None,
) -> None:
    """Refuse, before any sample runs, a method or budget that a live mode cannot run (see `methods.live_refusal`):
    its cache evicts again at every chunk or turn, or (long-output) while it decodes, with `generation_budget`."""
    for mode in (mode for mode in modes if mode in LIVE_MODES):
        one_shot = CHUNKED_MODES.get(mode, "question-aware or question-agnostic")
        decoding = generation_budget if mode == LONG_OUTPUT_MODE else None
        fractions = [budget for budget in budgets if isinstance(budget, float)]
        if fractions:
            why = (
                "whose bound on what the cache holds after the answer, budget + generation budget, counts tokens"
                if mode == LONG_OUTPUT_MODE
                else "which a cache that evicts at every chunk or turn cannot keep"
            )
            raise ValueError(
                f"--modes {mode} needs --budgets in tokens: {', '.join(map(str, fractions))} are fractions of a "
                f"prompt, {why}. Pass token budgets, or evaluate the fractions in another run with --modes {one_shot}."
            )
        for name, budget in ((name, budget) for name in methods for budget in budgets):
            refusal = live_refusal(name, budget, decoding)
            if refusal is not None:
                usable = [other for other in METHODS if other != FULL and live_refusal(other, budget, decoding) is None]
                if not usable:
                    setting = f"--budgets {budget}" + (f" --generation-budget {decoding}" if decoding else "")
                    raise ValueError(
                        f"--methods {name} cannot run in --modes {mode}: {refusal} No method can with {setting}."
                    )
                raise ValueError(
                    f"--methods {name} cannot run in --modes {mode}: {refusal} In {mode} use {', '.join(usable)} "
                    f"(beside full), or evaluate {name} with --modes {one_shot}."
                )


def run(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    adapter = args.adapter or (DEFAULT_MODEL if any(needs_adapter(name) for name in args.methods) else None)
    model, tokenizer = load_model(args.model, args.dtype, adapter=adapter, device_map=args.device_map)
    for name in args.methods:
        method = get_method(name)
        if isinstance(method, CacheMethod):
            method.check(model)
    samples = build_samples(tokenizer, args.tasks, args.lengths, args.samples, args.seed)
    records = [sample_record(sample, tokenizer) for sample in samples]
    settings = _settings(args, model)
    dependencies = method_dependencies(model, args.methods)
    predictions_path = args.out / "predictions.jsonl"
    # Everything is checked before anything is written: a refused call leaves the folder as it was.
    settings = _resumed_settings(args.out / "settings.json", settings)
    new_records = _new_sample_records(args.out / "samples.jsonl", records)
    rows = read_jsonl(predictions_path, check=report.check_row)
    _check_dependencies_of_done_rows(rows, predictions_path, dependencies)
    with append_jsonl(args.out / "samples.jsonl") as append:
        for record in new_records:
            append(record)
    write_text(args.out / "settings.json", json.dumps(settings, indent=2) + "\n")
    done = {(row["sample_id"], row["mode"], row["method"], row["budget"]) for row in rows}
    started = time.perf_counter()
    evaluate_samples(
        model,
        tokenizer,
        samples,
        args.methods,
        args.budgets,
        args.modes,
        predictions_path,
        done,
        dependencies,
        chunk_size=args.chunk_size,
        generation_budget=args.generation_budget,
        streaming_factor=args.streaming_factor,
    )
    logger.info(f"Evaluation took {time.perf_counter() - started:.0f} s.")
    all_rows = report.load_rows(args.out)
    summary = report.summarize(all_rows, groups=SUITE_SPLIT)
    comparisons = report.live_mode_comparisons(all_rows)
    (args.out / "summary.md").write_text(report.markdown_summary(summary) + comparisons)
    report.plot_accuracy_vs_budget(summary, args.out / "figures")
    if args.results_page is not None:
        report.write_results_page(args.out, args.results_page, command=_command_line(args))
        logger.info(f"Wrote {args.results_page}")
    print(report.markdown_summary(summary) + comparisons)
    return 0


def build_samples(
    tokenizer: PreTrainedTokenizerBase, tasks: tuple[str, ...], lengths: tuple[int, ...], samples: int, seed: int
) -> list[Sample]:
    built = []
    for length in lengths:
        for name in tasks:
            built.extend(get_task(name).build(tokenizer, length, samples, seed))
    return built


def sample_record(sample: Sample, tokenizer: PreTrainedTokenizerBase) -> dict:
    """A sample as `samples.jsonl` holds it: with its token ids, split where the question begins (read by the
    kvpress runner), and everything else that its rows depend on."""
    context_ids, question_ids = sample.prompt_ids(tokenizer)
    return {
        "sample_id": sample.id,
        "family": sample.family,
        "context_length": sample.context_length,
        "context_ids": context_ids[0].tolist(),
        "question_ids": question_ids[0].tolist(),
        "answers": list(sample.answers),
        "metric": sample.metric,
        "max_new_tokens": sample.max_new_tokens,
    }


def method_dependencies(model: PreTrainedModel, methods: list[str]) -> dict[str, dict[str, str]]:
    """Per method, the fingerprints of what its answers depend on besides the model and the sample, which its rows
    record: the lookahead adapter for methods that score with it, the LU-KV profile for those it allocates."""
    adapter = get_lookahead(model)
    dependencies = {}
    for name in methods:
        method = get_method(name)
        if not isinstance(method, CacheMethod):
            continue
        found = {}
        if method.needs_lookahead:
            found["adapter"] = adapter.fingerprint()[:16]
        if method.allocation == "lukv":
            found["profile"] = adapter_profile(model, method.scorer).fingerprint()[:16]
        if found:
            dependencies[name] = found
    return dependencies


def evaluate_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    samples: list[Sample],
    methods: list[str],
    budgets: tuple[int | float, ...],
    modes: tuple[str, ...],
    predictions_path: Path,
    done: set[tuple],
    dependencies: dict[str, dict[str, str]],
    chunk_size: int | None = None,
    generation_budget: int | None = None,
    streaming_factor: float = 1.0,
) -> None:
    """Run every (method, budget) on every sample and mode not in `done` (keys `(sample_id, mode, method, budget)`),
    appending rows to `predictions_path`; each row records the `dependencies` of its method. The session mode runs
    each method also with a session budget (rows `<method>@session`), the long-output mode with `generation_budget`
    (rows `<method>@decode`); the chunked modes read prompts in chunks of `chunk_size` tokens, the chunks before the
    last evicted to `streaming_factor` times the budget."""
    configs = {mode: mode_configurations(mode, methods, budgets) for mode in modes}
    progress = tqdm(total=len(samples) * sum(map(len, configs.values())), desc="eval", unit="answer")
    with append_jsonl(predictions_path) as append:
        for sample in samples:
            for mode in modes:
                todo = [c for c in configs[mode] if (sample.id, mode, *c) not in done]
                progress.update(len(configs[mode]) - len(todo))
                if not todo:
                    continue
                progress.set_postfix(sample=sample.id, mode=mode)
                if mode in LIVE_MODES:
                    run = start_live_run(model, tokenizer, sample, mode, chunk_size)
                    rows = _evaluate_live(
                        tokenizer, sample, mode, run, todo, progress, generation_budget, streaming_factor
                    )
                else:
                    rows = _evaluate_sample(model, tokenizer, sample, mode, todo, progress)
                for row in rows:
                    append({**row, **dependencies.get(base_method(row["method"]), {})})
    progress.close()


def mode_configurations(
    mode: str, methods: list[str], budgets: tuple[int | float, ...]
) -> list[tuple[str, int | float | None]]:
    """The (method, budget) rows of a sample in `mode`: `full` once, then every other method at every budget, in
    the session mode also with a session budget (`<method>@session`), in the long-output mode with a generation
    budget (`<method>@decode`)."""
    names = [method for method in methods if method != FULL]
    if mode == SESSION_MODE:
        names = [name for method in names for name in (method, session_budget_name(method))]
    elif mode == LONG_OUTPUT_MODE:
        names = [name for method in names for name in (method, generation_budget_name(method))]
    return [(FULL, None)] + [(name, budget) for name in names for budget in budgets]


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


def prediction_row(
    tokenizer: PreTrainedTokenizerBase,
    sample: Sample,
    mode: str,
    method: str,
    budget: int | float | None,
    prompt_tokens: int,
    answer_ids: torch.Tensor,
    footprint: tuple[float, int],
    prefill_s: float,
    compress_s: float | None,
    **extra,
) -> dict:
    """One row of `predictions.jsonl`; `footprint` is the cache's (kept tokens, KV bytes) before it answered, since
    a cache that decodes alone (not stacked with others) grows by the answer; `extra` fields follow the others."""
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
        "score": score_predictions(sample.family, sample.metric, [prediction], [list(sample.answers)])[0],
        "prefill_s": prefill_s,
        "compress_s": compress_s,
        "kv_bytes": footprint[1],
        **extra,
    }


def _evaluate_live(
    tokenizer,
    sample: Sample,
    mode: str,
    run: LiveRun,
    configs,
    progress,
    generation_budget: int | None = None,
    streaming_factor: float = 1.0,
):
    """The rows of a live mode: each (method, budget) reads the prompt with `generate` into its own fresh cache. They
    carry `peak_kv_bytes`, in the session mode `turn_tokens` (the longest turn after the first), and in the
    long-output mode `generation_budget` (`generation_budget` for `<method>@decode` rows, else null),
    `kept_after_answer` (the tokens per layer and KV head the cache holds once the answer was decoded) and
    `agreement` (`<method>@decode` rows: the common prefix of their answer with the `<method>` answer at the same
    budget, over that answer's length; else null)."""
    extra = {"turn_tokens": run.longest_later_turn} if mode == SESSION_MODE else {}
    # The long-output mode's `<method>` answers, which its `<method>@decode` rows are compared with.
    plain_answers: dict[tuple[str, int | float | None], torch.Tensor] = {}
    for method, budget in configs:
        decodes = mode == LONG_OUTPUT_MODE and method == generation_budget_name(base_method(method))
        streaming_budget = None
        if mode in CHUNKED_MODES and budget is not None and streaming_factor != 1.0:
            streaming_budget = round(streaming_factor * budget)
        live = run.answer(live_cache(method, budget, generation_budget if decodes else None, streaming_budget))
        if mode == LONG_OUTPUT_MODE:
            if not decodes:
                plain_answers[(method, budget)] = live.answer_ids
            agreement = None
            if decodes:
                plain = (base_method(method), budget)
                if plain not in plain_answers:
                    # Its row was written by an earlier call: the same greedy answer again, for the comparison.
                    plain_answers[plain] = run.answer(live_cache(plain[0], budget)).answer_ids
                agreement = answer_agreement(live.answer_ids, plain_answers[plain])
            extra = {
                "generation_budget": generation_budget if decodes else None,
                "kept_after_answer": live.kept_after_answer,
                "agreement": agreement,
            }
        footprint = (live.kept_tokens, live.kv_bytes)
        yield prediction_row(
            tokenizer,
            sample,
            mode,
            method,
            budget,
            run.prompt_tokens,
            live.answer_ids,
            footprint,
            live.prefill_s,
            None,
            peak_kv_bytes=live.peak_kv_bytes,
            **extra,
        )
        progress.update()


def answer_agreement(answer_ids: torch.Tensor, reference_ids: torch.Tensor) -> float:
    """How far `answer_ids` (`[1, k]`) follows `reference_ids` (`[1, m]`): the length of their common prefix, token
    by token up to the first difference, over the reference's length (1.0 when identical, or both empty)."""
    answer, reference = answer_ids[0].tolist(), reference_ids[0].tolist()
    if not reference:
        return 1.0
    common = next((i for i, (a, b) in enumerate(zip(answer, reference)) if a != b), min(len(answer), len(reference)))
    return common / len(reference)


def _evaluate_sample(model, tokenizer, sample: Sample, mode: str, configs, progress):
    run = start_run(model, tokenizer, sample, mode)
    prompt_tokens = run.prefilled_ids.shape[-1] + run.question_ids.shape[-1]

    def row(method: str, budget, footprint: tuple[float, int], compress_s: float, answer_ids: torch.Tensor):
        return prediction_row(
            tokenizer,
            sample,
            mode,
            method,
            budget,
            prompt_tokens,
            answer_ids,
            footprint,
            run.recording.seconds,
            compress_s,
        )

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


def _check_dependencies_of_done_rows(rows: list[dict], path: Path, dependencies: dict[str, dict[str, str]]) -> None:
    """Refuse to add rows of a method made with another adapter or profile than its rows already there."""
    others = {
        (row["method"], kind, row.get(kind))
        for row in rows
        for kind, fingerprint in dependencies.get(base_method(row["method"]), {}).items()
        if row.get(kind) != fingerprint
    }
    if others:
        listed = ", ".join(
            f"{method} ({kind} {fingerprint or 'not recorded'})"
            for method, kind, fingerprint in sorted(others, key=str)
        )
        ours = ", ".join(
            sorted({f"{kind} {value}" for found in dependencies.values() for kind, value in found.items()})
        )
        raise ValueError(
            f"{path} holds rows made with another lookahead adapter or LU-KV profile than this run's ({ours}): "
            f"{listed}. Evaluate into another --out, or remove those methods' rows to rerun them with this run's."
        )


def _settings(args: argparse.Namespace, model: PreTrainedModel) -> dict:
    return {
        "model": DEFAULT_MODEL_FILE if args.model == DEFAULT_MODEL else args.model,
        "model_sha256": model_fingerprint(model),
        "size": args.size,
        "tasks": list(args.tasks),
        "lengths": list(args.lengths),
        "samples_per_task_and_length": args.samples,
        "methods": list(args.methods),
        "budgets": list(args.budgets),
        "modes": list(args.modes),
        "seed": args.seed,
        **(
            {"chunk_size": args.chunk_size, "streaming_factor": args.streaming_factor}
            if any(mode in CHUNKED_MODES for mode in args.modes)
            else {}
        ),
        **({"generation_budget": args.generation_budget} if LONG_OUTPUT_MODE in args.modes else {}),
        "dtype": str(model.dtype).removeprefix("torch."),
        "device": str(model.device),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "date": date.today().isoformat(),
    }


def _resumed_settings(path: Path, settings: dict) -> dict:
    """What `settings.json` holds once this call has run: refused if the run there has another model or seed, or
    both read prompts in chunks (`chunk_size`, recorded by runs of the chunked modes) of another size, or both ran
    the long-output mode with another generation budget (`generation_budget`).

    Otherwise this call adds its methods, budgets, ... to the lists; where its environment differs (a newer
    transformers, another day) both values are listed, so that rows kept from the earlier run are not credited to
    the later environment.
    """
    if not path.exists():
        return settings
    previous = read_json(path)
    if "chunk_size" in previous:
        # Chunked runs before the option evicted every chunk to the budget.
        previous.setdefault("streaming_factor", 1.0)
    identity = {"--model": "model", "model_sha256": "model_sha256", "--seed": "seed"}
    for option, key in (
        ("--chunk-size", "chunk_size"),
        ("--streaming-factor", "streaming_factor"),
        ("--generation-budget", "generation_budget"),
    ):
        if key in settings and key in previous:
            identity[option] = key
    check_same_run(
        path.parent,
        {name: previous[key] for name, key in identity.items() if key in previous},
        {name: settings[key] for name, key in identity.items()},
    )
    # What only the earlier run recorded stays (a chunk size, when this call runs no chunked mode; a generation
    # budget, when it runs no long-output mode).
    merged = {**previous, **settings}
    for key, value in settings.items():
        if key not in previous or previous[key] == value:
            continue
        earlier = previous[key] if isinstance(previous[key], list) else [previous[key]]
        merged[key] = earlier + [
            item for item in (value if isinstance(value, list) else [value]) if item not in earlier
        ]
    return merged


def _new_sample_records(path: Path, records: list[dict]) -> list[dict]:
    """The records of this call's samples that `samples.jsonl` lacks; refused if it holds one of them otherwise."""
    recorded = {record["sample_id"]: record for record in read_jsonl(path)}
    for record in records:
        earlier = recorded.get(record["sample_id"])
        if earlier is not None:
            differing = [key for key in record if earlier.get(key) != record[key]]
            check_same_run(
                path,
                {key: earlier[key] for key in differing if key in earlier},
                {key: record[key] for key in differing},
                what=f"sample {record['sample_id']}",
            )
    return [record for record in records if record["sample_id"] not in recorded]


def _command_line(args: argparse.Namespace) -> str:
    parts = ["lookahead-cache eval", f"--model {args.model}", f"--size {args.size}", f"--out {args.out}"]
    parts.append("--methods " + " ".join(args.methods))
    parts.append("--tasks " + " ".join(args.tasks))
    parts.append("--lengths " + " ".join(map(str, args.lengths)))
    parts.append("--budgets " + " ".join(map(str, args.budgets)))
    parts.append(f"--samples {args.samples} --modes " + " ".join(args.modes) + f" --seed {args.seed}")
    if any(mode in CHUNKED_MODES for mode in args.modes):
        parts.append(f"--chunk-size {args.chunk_size} --streaming-factor {args.streaming_factor:g}")
    if LONG_OUTPUT_MODE in args.modes:
        parts.append(f"--generation-budget {args.generation_budget}")
    if args.results_page is not None:
        parts.append(f"--results-page {args.results_page}")
    return " ".join(parts)
