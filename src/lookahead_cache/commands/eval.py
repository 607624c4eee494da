"""`lookahead-cache eval`: every method side by side on the offline long-context suite."""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..cli import DTYPE_CHOICES, budget_value, positive_int
from ..evaluation.tasks import EXTRA_TASKS, TASKS
from ..training.config import VALIDATION_SEED
from ..training.forms import FORMS

RUNNER = "lookahead_cache.evaluation.suite"
DEFAULT_MODEL = "default"
# The one-shot modes replay one recorded prefill per prompt for every method; the live ones (streaming prefill read
# in chunks, sessions of three turns) run each method with `generate` on the model (lookahead_cache.evaluation.live).
ONE_SHOT_MODES = ("question-aware", "question-agnostic")
# Each chunked mode reads the prompts of a one-shot mode in chunks.
CHUNKED_MODES = {"chunked-question-aware": "question-aware", "chunked-question-agnostic": "question-agnostic"}
SESSION_MODE = "session"
# Question-aware prompts read in one forward, then a long answer (the family's max_new_tokens, e.g.
# code_continuation_long's 1024), each method also with a generation budget evicting while it decodes.
LONG_OUTPUT_MODE = "long-output"
MODES = (*ONE_SHOT_MODES, *CHUNKED_MODES, SESSION_MODE, LONG_OUTPUT_MODE)
DEFAULT_CHUNK_SIZE = 512
DEFAULT_GENERATION_BUDGET = 256
DEFAULT_STREAMING_FACTOR = 1.0
# What `from_pretrained(device_map=...)` takes besides a device or a map: accelerate's placement strategies.
DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE = re.compile(r"(cpu|cuda|mps|xpu|npu|hpu|mlu|musa)(:\d+)?|\d+")


def device_map_value(text: str) -> str | int | dict[str, str | int]:
    """argparse type of `--device-map` (train, profile, eval): a strategy, one device, or a JSON file of module name to
    device, as `from_pretrained(device_map=...)` takes them; whether the devices exist is checked when the model
    loads (`model_loading.check_device_map`)."""
    if text in DEVICE_MAP_STRATEGIES:
        return text
    if _DEVICE.fullmatch(text):
        return int(text) if text.isdigit() else text
    if text.endswith(".json"):
        try:
            placement = json.loads(Path(text).read_text())
        except (OSError, ValueError) as error:
            raise argparse.ArgumentTypeError(f"{text} does not read as a JSON device map: {error}") from error
        if not (
            isinstance(placement, dict)
            and placement
            and all(
                isinstance(place, int) or (isinstance(place, str) and (place == "disk" or _DEVICE.fullmatch(place)))
                for place in placement.values()
            )
        ):
            raise argparse.ArgumentTypeError(
                f"{text} is not a device map: write one JSON object of module name to device, e.g. "
                '{"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 1, "model.norm": 1, "lm_head": 1}, '
                'devices being an index, "cpu", "cuda:1" or "disk".'
            )
        return placement
    raise argparse.ArgumentTypeError(
        f"{text!r} is neither a placement strategy ({', '.join(DEVICE_MAP_STRATEGIES)}), a device (cpu, cuda, cuda:1, "
        "mps, an index) nor a JSON file (.json) of module name to device"
    )


def add_placement_arguments(parser: argparse.ArgumentParser, dtype_help: str, device_map_note: str = "") -> None:
    """`--dtype` and `--device-map`, as train, profile and eval take them."""
    parser.add_argument("--dtype", default="float32", choices=DTYPE_CHOICES, help=dtype_help)
    parser.add_argument(
        "--device-map",
        type=device_map_value,
        metavar="PLACEMENT",
        help="Where the model loads (from_pretrained's device_map; default: the CPU): one device (cpu, cuda:0), "
        "a strategy spreading a model too large for one device over the GPUs there are "
        f"({', '.join(DEVICE_MAP_STRATEGIES)}), "
        "or a JSON file of module name to device. See docs/bring-your-own-model.md#a-model-larger-than-one-device."
        + device_map_note,
    )


@dataclass(frozen=True)
class SuiteSize:
    lengths: tuple[int, ...]
    samples: int
    budgets: tuple[int | float, ...]
    modes: tuple[str, ...]


SIZES = {
    # Every family and default method, two samples each so intervals exist: about 32 minutes on 2 CPU cores with
    # the embedded 135M model.
    "quick": SuiteSize(lengths=(2048,), samples=2, budgets=(64, 128, 256), modes=("question-aware",)),
    "full": SuiteSize(
        lengths=(1024, 2048, 4096, 8192), samples=20, budgets=(64, 128, 256, 512, 0.1, 0.25, 0.5), modes=ONE_SHOT_MODES
    ),
}
# What runs unless told otherwise: one row per scorer, with the allocation it is known by (the rest of
# lookahead_cache.evaluation.methods.METHODS: adakv, lukv, lookahead-adakv, lookahead-lukv).
DEFAULT_METHODS = ("full", "streaming", "knorm", "random", "snapkv", "pyramidkv", "oracle", "laq", "lookahead")
EXTRA_METHODS = ("adakv", "lukv", "lookahead-adakv", "lookahead-lukv", "lookahead-window")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help="'default' (the embedded SmolLM2-135M-Instruct), a local model folder or a Hub model id (safetensors "
        "weights).",
    )
    add_placement_arguments(parser, "The dtype the model is loaded in.")
    parser.add_argument(
        "--size",
        choices=list(SIZES),
        default="quick",
        help="Preset of lengths, samples, budgets and modes: quick is 2048 tokens, 2 samples per family, budgets 64 "
        "128 256, question-aware (about 32 min on 2 CPU cores); full is the GPU-sized sweep.",
    )
    parser.add_argument("--quick", dest="size", action="store_const", const="quick", help="Same as --size quick.")
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(DEFAULT_METHODS),
        choices=[*DEFAULT_METHODS, *EXTRA_METHODS],
        metavar="METHOD",
        help=f"Methods to compare; choices: {', '.join([*DEFAULT_METHODS, *EXTRA_METHODS])}.",
    )
    parser.add_argument(
        "--adapter",
        help="Lookahead adapter (local folder or Hub repo id) for the lookahead methods; with the default model, "
        "the adapter shipped with lookahead-cache when not given.",
    )
    parser.add_argument(
        "--tasks",
        nargs="+",
        choices=[*TASKS, *FORMS],
        metavar="TASK",
        help=f"Task families (the suite's if not given, every one but {', '.join(EXTRA_TASKS)}): "
        f"{', '.join(TASKS)}; or forms of the training mix "
        f"({', '.join(FORMS)}), e.g. with the validation seed --seed {VALIDATION_SEED} to choose settings on prompts "
        "no adapter trained on.",
    )
    parser.add_argument(
        "--budgets",
        type=budget_value,
        nargs="+",
        help="Budgets (tokens, or fractions in (0, 1]); the preset's if not given.",
    )
    parser.add_argument(
        "--lengths", type=positive_int, nargs="+", help="Prompt lengths in tokens; the preset's if not given."
    )
    parser.add_argument(
        "--samples", type=positive_int, help="Samples per task family and length; the preset's if not given."
    )
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        metavar="MODE",
        help="How each prompt is read; the preset's if not given. One-shot, every method replaying one recorded "
        "prefill: question-aware (context and question evicted together), question-agnostic (the context evicted, "
        "then the question as a new turn). Live, each method and budget generating with a fresh cache: "
        "chunked-question-aware and chunked-question-agnostic (the same prompts read in chunks of --chunk-size "
        "tokens, evicted after every chunk), session (a chat of three turns: the document, an unrelated exchange, "
        "the question; each method also with a session budget, rows '<method>@session', evicting at every turn), "
        "long-output (question-aware prompts read in one forward, then the family's long answer, e.g. "
        "code_continuation_long's 1024 tokens; each method also with --generation-budget, rows '<method>@decode', "
        "evicting while it decodes). The live modes take token budgets; the chunked modes and session the methods "
        "full, streaming, knorm, random, snapkv, pyramidkv and lookahead, long-output every method but oracle and laq.",
    )
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=DEFAULT_CHUNK_SIZE,
        help="Tokens per chunk of the chunked modes' prefill (generate's prefill_chunk_size); a resumed run keeps "
        "its chunk size.",
    )
    parser.add_argument(
        "--streaming-factor",
        type=float,
        default=DEFAULT_STREAMING_FACTOR,
        help="The chunked modes' chunks before the last keep this many times the budget "
        "(LookaheadCache(streaming_budget=round(factor x budget))); the last chunk, with the question, evicts to the "
        "budget. 1 evicts every chunk to the budget. A resumed run keeps its factor.",
    )
    parser.add_argument(
        "--generation-budget",
        type=positive_int,
        default=DEFAULT_GENERATION_BUDGET,
        help="Tokens after the prompt that the long-output mode's '<method>@decode' rows keep per layer and KV head "
        "(LookaheadCache(generation_budget=...)); at least 64, the generation interval (32) plus the window (32). A "
        "resumed run keeps its generation budget.",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the task samples.")
    parser.add_argument("--out", type=Path, required=True, help="Output directory (resumable).")
    parser.add_argument("--results-page", type=Path, help="Also write the results page here (e.g. docs/results.md).")
