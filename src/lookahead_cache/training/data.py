"""The training data: offline prompts, the frozen model's own greedy responses, and their attention to the prompt.

Making the responses is the long part (a prefill and a greedy decode per prompt), so they are kept apart from
everything else, in a responses file (`responses.jsonl` in the run folder, or a file passed in that can be
committed and shared): one row per prompt with the response as token ids and a digest of the prompt. It is all a
run needs to resume on another machine: the prompts are rebuilt from the mix's seed and checked against the
digests, and the target attention is recomputed from prompt and response (a prefill and one forward of the response,
no decoding).

With `store_prompt_kv`, each prompt's keys and values and its target are also stored in the run folder (one
safetensors file each), sparing every training step its prompt forward, which is most of a step's time; they take
`layers x kv_heads x head_dim x 2` values per prompt token on disk (90 MiB for a 2048-token SmolLM2-135M prompt in
float32). Without it, every step reruns the prompt and recomputes the target. A stored file that does not read back
stops the run, naming it (deleting it has it made again).

Under several processes each makes the responses of its share of the missing prompts (every process's batches are
the batches one process would make, dealt out in turn) into a file of its own beside the responses file
(`responses.process<rank>.jsonl`); the main process then appends their rows to the responses file in the order one
process would have written them, and deletes those files. A file that an interrupted run left is merged in when the
run resumes, its rows after the ones already there.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, replace
from operator import itemgetter
from pathlib import Path
from typing import Protocol

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from ..evaluation.replay import PrefillRecording, future_queries, record_prefill
from ..evaluation.tasks import Sample
from ..prefill import CACHE_ARGUMENT, LayerPrefill
from ..run_folder import (
    append_jsonl,
    check_same_run,
    load_safetensors,
    model_fingerprint,
    read_json,
    read_jsonl,
    safetensors_metadata,
    save_safetensors,
    write_text,
)
from ..scorers.future_queries import FutureQueriesScorer
from .config import TrainingConfig
from .forms import get_task
from .user_data import UserData, UserPrompt, model_context_length, read_user_data

logger = logging.get_logger(__name__)

RESPONSES_NAME = "responses.jsonl"
# Responses decode in batches of prompts of one length, up to this many prompt tokens in all, gathered from windows
# of this many prompts.
BATCH_TOKENS = 16384
BATCH_WINDOW = 48
TARGETS_DIR = "targets"
PROMPT_KV_DIR = "prompt_kv"


def prompt_key(sample: Sample, seed: int) -> str:
    """A prompt's name in a responses file: its sample id and the seed it was drawn with (`doc_qa/1024/3@1000`)."""
    return f"{sample.id}@{seed}"


def prompt_digest(input_ids: list[int]) -> str:
    """16 hex digits of a sha256 of the prompt's token ids: what a rebuilt prompt is checked against."""
    return hashlib.sha256(json.dumps(input_ids).encode()).hexdigest()[:16]


def build_prompts(
    tokenizer: PreTrainedTokenizerBase,
    config: TrainingConfig,
    validation: bool = False,
    user_data: UserData | None = None,
) -> dict[str, Sample | UserPrompt]:
    """The training mix by prompt key: `samples_per_task[i]` prompts per form at `lengths[i]`, drawn with the training
    seed, then the training share of the user's prompts (`user_data`, read from `config.data_files`); or, with
    `validation`, `validation_samples_per_task` of them drawn with the validation seed, then the user's held-out
    prompts (`config.validation_fraction`).

    Ordered index first (the first prompt of every form and length, then the second...), so that responses made in
    this order cover every form and length evenly when they are interrupted.
    """
    if config.data_files and user_data is None:
        raise ValueError(
            f"config.data_files names {config.data_files}: pass their prompts, user_data=read_config_data(model, "
            "tokenizer, config)."
        )
    counts, seed = (
        (config.validation_samples_per_task, config.validation_seed)
        if validation
        else (config.samples_per_task, config.seed)
    )
    built = {
        (name, length): get_task(name).build(tokenizer, length, count, seed)
        for length, count in zip(config.lengths, counts)
        if count
        for name in config.tasks
    }
    prompts = {}
    for index in range(max(counts, default=0)):
        for samples in built.values():
            if index < len(samples):
                prompts[prompt_key(samples[index], seed)] = samples[index]
    if user_data is not None:
        training, held_out = user_data.split(config.validation_fraction)
        prompts.update((prompt.key, prompt) for prompt in (held_out if validation else training))
    return prompts


def read_config_data(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: TrainingConfig
) -> UserData | None:
    """The prompts of `config.data_files` (None without any), those too long for `model`'s context skipped."""
    if not config.data_files:
        return None
    context = model_context_length(model.config)
    return read_user_data(config.data_files, tokenizer, context, config.response_tokens)


@dataclass
class TrainingExample:
    """One prompt and the frozen model's greedy response to it.

    The target (`[layers, kv_heads, prompt_len]` float32, each row summing to 1) is the mean softmax attention that
    the response tokens pay to the prompt, per layer and KV head: what the lookahead tokens learn to predict. It is
    read from `target_path` when the run stores it with the prompt's keys and values (`prompt_kv_path`), and
    recomputed from the prompt otherwise.
    """

    sample_id: str
    input_ids: list[int]
    response_ids: list[int]
    target_path: Path | None = None
    prompt_kv_path: Path | None = None

    def stored_target(self) -> torch.Tensor:
        if self.target_path is None:
            raise ValueError(f"{self.sample_id} was prepared without storing its target.")
        return load_safetensors(self.target_path)["target"]

    def stored_prefills(self, attention_modules: dict[int, torch.nn.Module]) -> list[LayerPrefill]:
        """The prompt's stored keys and values, per layer, as the `LayerPrefill`s that training reads.

        They carry no attention input (`hidden_states` is None): training needs the prompt's keys and values only.

        Args:
            attention_modules: The attention module of each layer, by its cache layer index.
        """
        if self.prompt_kv_path is None:
            raise ValueError(f"{self.sample_id} was prepared without storing its prompt's keys and values.")
        device = next(iter(attention_modules.values())).q_proj.weight.device
        stored = load_safetensors(self.prompt_kv_path, device=str(device))
        if set(stored) != {f"{kind}.{layer_idx}" for layer_idx in attention_modules for kind in ("keys", "values")}:
            raise ValueError(
                f"{self.prompt_kv_path} holds {len(stored) // 2} layers, the model {len(attention_modules)}: it was "
                "stored for another model; delete the run folder's prompt_kv/ to store it again."
            )
        valid = torch.ones(1, len(self.input_ids), dtype=torch.bool, device=device)
        return [
            LayerPrefill(
                module=module,
                layer_idx=layer_idx,
                keys=stored[f"keys.{layer_idx}"][None],
                values=stored[f"values.{layer_idx}"][None],
                hidden_states=None,
                position_embeddings=None,
                valid=valid,
            )
            for layer_idx, module in sorted(attention_modules.items())
        ]


def _store_prompt_kv(recording: PrefillRecording, path: Path) -> None:
    tensors = {}
    for prefill in recording.prefills:
        tensors[f"keys.{prefill.layer_idx}"] = prefill.keys[0].contiguous()
        tensors[f"values.{prefill.layer_idx}"] = prefill.values[0].contiguous()
    save_safetensors(tensors, path)


@torch.no_grad()
def greedy_responses(
    model: PreTrainedModel, recordings: list[PrefillRecording], max_new_tokens: int
) -> list[list[int]]:
    """The greedy responses of `model` to recorded prompts, each up to its end of turn or `max_new_tokens`.

    The prompts decode together, left-padded to the longest: a CPU decode step costs about as much for a few
    prompts as for one (it reads every weight once), so a batch makes its responses several times faster than one
    prompt at a time. Padding changes float rounding only, so a response can differ from the unbatched one where
    two tokens tie to rounding: it is still the model's own greedy response.
    """
    longest = max(recording.prompt_length for recording in recordings)
    cache = DynamicCache()
    for layer, _ in enumerate(recordings[0].prefills):
        keys, values = [], []
        for recording in recordings:
            prefill = recording.prefills[layer]
            padding = (0, 0, longest - prefill.prompt_length, 0)
            keys.append(torch.nn.functional.pad(prefill.keys, padding))
            values.append(torch.nn.functional.pad(prefill.values, padding))
        cache.update(torch.cat(keys), torch.cat(values), recordings[0].prefills[layer].layer_idx)
    lengths = torch.tensor([recording.prompt_length for recording in recordings], device=cache.layers[0].keys.device)
    mask = torch.arange(longest, device=lengths.device)[None] >= (longest - lengths)[:, None]
    tokens = torch.cat([recording.next_token_logits for recording in recordings]).argmax(-1, keepdim=True)
    eos = model.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else (eos or []), device=tokens.device)
    generated = [tokens]
    finished = torch.isin(tokens[:, 0], eos)
    for step in range(max_new_tokens - 1):
        if finished.all():
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
        logits = model(
            input_ids=tokens,
            attention_mask=mask.long(),
            position_ids=(lengths + step)[:, None],
            **{CACHE_ARGUMENT: cache},
            use_cache=True,
        ).logits
        tokens = logits[:, -1].argmax(-1, keepdim=True)
        generated.append(tokens)
        finished |= torch.isin(tokens[:, 0], eos)
    responses = []
    for row in torch.cat(generated, dim=-1).tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in eos.tolist()), len(row))
        responses.append(row[:end])
    return responses


@torch.no_grad()
def response_target(model: PreTrainedModel, recording: PrefillRecording, response: torch.Tensor) -> torch.Tensor:
    """`[layers, kv_heads, prompt_len]`: the mean attention that the `response` (`[1, n]`) pays to the recorded
    prompt, per layer and KV head (the oracle's scores)."""
    scorer = FutureQueriesScorer(future_queries(model, recording.prefills, response))
    return torch.cat([scorer.score(prefill) for prefill in recording.prefills])


def response_and_target(
    model: PreTrainedModel, input_ids: torch.Tensor, max_new_tokens: int
) -> tuple[PrefillRecording, torch.Tensor, torch.Tensor]:
    """The prompt's recorded prefill, the greedy response `[1, n]` of `model` to `input_ids` (`[1, T]`) and its
    target attention."""
    recording = record_prefill(model, input_ids)
    (response,) = greedy_responses(model, [recording], max_new_tokens)
    response = torch.tensor([response], device=input_ids.device)
    return recording, response, response_target(model, recording, response)


def responses_settings_path(responses: Path) -> Path:
    """The settings file beside a responses file: which model made them, how long they may be."""
    return responses.with_name(responses.stem + ".settings.json")


def _check_responses_settings(responses: Path, model: PreTrainedModel, config: TrainingConfig) -> None:
    """Refuse responses made by another model or with another response length; record the settings of new ones."""
    current = {"model_sha256": model_fingerprint(model), "response_tokens": config.response_tokens}
    settings = responses_settings_path(responses)
    if settings.exists():
        check_same_run(responses, read_json(settings), current, what="responses")
    elif responses.exists() and read_jsonl(responses):
        raise ValueError(
            f"{responses} holds responses but not the settings file {settings.name} that says which model made them: "
            "restore it beside the responses, or pass another responses file."
        )
    else:
        # The Python version is recorded, not compared: its docs and sources are the mix's text, and a prompt that
        # changes with it is caught by its digest.
        recorded = {**current, "python": platform.python_version()}
        write_text(settings, json.dumps(recorded, indent=2) + "\n")


def prepare_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainingConfig,
    out_dir: Path,
    prompts: dict[str, Sample | UserPrompt] | None = None,
    responses: Path | None = None,
    disable_progress: bool = False,
    *,
    store: bool | None = None,
    make_missing: bool = True,
    processes: Processes | None = None,
) -> list[TrainingExample]:
    """The training examples of `prompts` (default: the config's training mix): each response made once and appended
    to `responses` (default `out_dir/responses.jsonl`), reused from there after an interruption or on another machine,
    unless the prompt's data gives it; with `store` (default `config.store_prompt_kv`), the prompt's keys and values
    and its target stored under `out_dir`.

    Args:
        make_missing: Make the responses not in `responses` yet; without it their examples are returned with empty
            `response_ids`, for `make_responses` to fill when they are needed.
        processes: The processes of a distributed run (an `accelerate.Accelerator`), which all call this together:
            each makes its share of the missing responses (and stored files), and every one returns every example.

    Raises:
        ValueError: `responses` was made by another model or with another `response_tokens`, or a prompt rebuilt
            here is not the one it answered (the mix's source texts differ: another Python version).
    """
    if prompts is None:
        prompts = build_prompts(tokenizer, config, user_data=read_config_data(model, tokenizer, config))
    responses = out_dir / RESPONSES_NAME if responses is None else Path(responses)
    rank, world = (0, 1) if processes is None else (processes.process_index, processes.num_processes)
    if rank == 0:
        responses.parent.mkdir(parents=True, exist_ok=True)
        _check_responses_settings(responses, model, config)
        merge_process_responses(responses)
    if world > 1:
        # Every process reads the responses file as the main process left it, so all count the same missing ones.
        processes.wait_for_everyone()
    answered = {row["key"]: row for row in read_jsonl(responses)}
    stored = {}
    if config.store_prompt_kv if store is None else store:
        for name in (TARGETS_DIR, PROMPT_KV_DIR):
            stored[name] = out_dir / name
            stored[name].mkdir(parents=True, exist_ok=True)
    examples = {}
    for key, sample in prompts.items():
        context_ids, question_ids = sample.prompt_ids(tokenizer)
        input_ids = torch.cat([context_ids, question_ids], dim=-1)[0].tolist()
        row = answered.get(key)
        if row is not None and row["prompt_sha256"] != prompt_digest(input_ids):
            raise ValueError(
                f"The prompt {key} built here is not the one {responses} answered (digest "
                f"{prompt_digest(input_ids)}, recorded {row['prompt_sha256']}): the mix's source texts differ, most "
                f"likely another Python version (see {responses_settings_path(responses).name}); for a prompt of a "
                "data file, another tokenizer or chat template. Use the same, or make responses anew in another file."
            )
        given = sample.response_ids if isinstance(sample, UserPrompt) else None
        examples[key] = TrainingExample(key, input_ids, given or ([] if row is None else row["response_ids"]))
        if stored:
            name = key.replace("/", "_").replace("@", "_") + ".safetensors"
            examples[key].target_path = stored[TARGETS_DIR] / name
            examples[key].prompt_kv_path = stored[PROMPT_KV_DIR] / name

    def store_files(example: TrainingExample, recording: PrefillRecording) -> None:
        response = torch.tensor([example.response_ids], device=input_device(model))
        _store_prompt_kv(recording, example.prompt_kv_path)
        save_safetensors({"target": response_target(model, recording, response).cpu()}, example.target_path)

    pending = [example for example in examples.values() if not example.response_ids] if make_missing else []
    batches = _same_length_batches(pending, [prompts[example.sample_id].context_length for example in pending])
    # One process makes every batch; several deal them out in turn, each into its own file.
    mine = batches[rank::world]
    with (
        append_jsonl(process_responses_path(responses, rank) if world > 1 else responses) as append,
        tqdm(total=sum(map(len, mine)), desc="responses", unit="prompt", disable=disable_progress) as progress,
    ):
        for batch in mine:
            # Stored before the responses are listed, so that a listed response has its files.
            before_listing = store_files if stored else None
            make_responses(model, batch, config.response_tokens, append, before_listing=before_listing)
            progress.update(len(batch))
    if world > 1:
        if pending:
            logger.info(
                f"Process {rank} of {world} made {sum(map(len, mine))} of the {len(pending)} missing responses "
                f"({len(mine)} of {len(batches)} batches)."
            )
        processes.wait_for_everyone()
        if rank == 0:
            merge_process_responses(responses, order=[example.sample_id for batch in batches for example in batch])
        processes.wait_for_everyone()
        if pending:
            made = {row["key"]: row["response_ids"] for row in read_jsonl(responses)}
            for example in pending:
                example.response_ids = made[example.sample_id]
    unstored = []
    for example in examples.values():
        if not stored or not example.response_ids:
            continue
        if example.target_path.is_file() and example.prompt_kv_path.is_file():
            # Read now, from the header alone: a damaged file is named before any training, not at its step.
            safetensors_metadata(example.target_path)
            safetensors_metadata(example.prompt_kv_path)
        else:
            unstored.append(example)
    if world > 1 and stored:
        # Every process has listed the same ones before any stores its share of them.
        processes.wait_for_everyone()
    for example in unstored[rank::world]:
        store_files(example, _record_keys_and_values(model, example.input_ids))
    if world > 1 and stored:
        processes.wait_for_everyone()
    return list(examples.values())


class Processes(Protocol):
    """What `prepare_examples` needs of a distributed run: `accelerate.Accelerator` has it."""

    process_index: int
    num_processes: int

    def wait_for_everyone(self) -> None: ...


def process_responses_path(responses: Path, rank: int) -> Path:
    """The file where process `rank` of a distributed run writes the responses it makes, beside `responses`."""
    return responses.with_name(f"{responses.stem}.process{rank}.jsonl")


def merge_process_responses(responses: Path, order: list[str] | None = None) -> int:
    """Append to `responses` the rows of the per-process files beside it (`process_responses_path`) that it lacks,
    in `order` of their keys (the order one process makes them in), else file by file; then delete those files.
    Returns how many rows were appended.

    A row whose key `responses` holds already is dropped: an interruption between the append and the deletion
    leaves the files to be merged again.
    """
    prefix = f"{responses.stem}.process"
    found = {}
    for path in responses.parent.glob(f"{prefix}*.jsonl"):
        rank = path.name[len(prefix) : -len(".jsonl")]
        if rank.isdigit():
            found[int(rank)] = path
    paths = [found[rank] for rank in sorted(found)]
    if not paths:
        return 0
    rows = {}
    for path in paths:
        for row in read_jsonl(path):
            rows.setdefault(row["key"], row)
    present = {row["key"] for row in read_jsonl(responses)}
    ordered = [key for key in order or [] if key in rows]
    keys = ordered + [key for key in rows if key not in set(ordered)]
    new = [rows[key] for key in keys if key not in present]
    with append_jsonl(responses) as append:
        for row in new:
            append(row)
    for path in paths:
        path.unlink()
    return len(new)


def make_responses(
    model: PreTrainedModel,
    examples: list[TrainingExample],
    max_new_tokens: int,
    append: Callable[[dict], None],
    before_listing: Callable[[TrainingExample, PrefillRecording], None] | None = None,
) -> list[PrefillRecording]:
    """Make the greedy responses of `examples` together, set their `response_ids` and `append` their rows to the
    responses file; returns each prompt's recorded prefill, which training reuses for its step.

    Args:
        before_listing: Called with each example and its recording before its row is appended.
    """
    recordings = [_record_keys_and_values(model, example.input_ids) for example in examples]
    for example, recording, response in zip(examples, recordings, greedy_responses(model, recordings, max_new_tokens)):
        example.response_ids = response
        if before_listing is not None:
            before_listing(example, recording)
        append(
            {
                "key": example.sample_id,
                "prompt_sha256": prompt_digest(example.input_ids),
                "prompt_tokens": len(example.input_ids),
                "response_ids": response,
            }
        )
    return recordings


def _record_keys_and_values(model: PreTrainedModel, input_ids: list[int]) -> PrefillRecording:
    """The prompt's recorded prefill without the attention inputs, which responses and targets do not read (a
    batch of 8k-token recordings would hold gigabytes of them)."""
    recording = record_prefill(model, torch.tensor([input_ids], device=input_device(model)))
    recording.prefills = [replace(prefill, hidden_states=None) for prefill in recording.prefills]
    return recording


def input_device(model: PreTrainedModel) -> torch.device:
    """Where `model`'s input ids go: its input embedding's device, which a model placed by `device_map` (layers on
    several devices) has first; for an embedding that accelerate offloads, the device its hook runs it on."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embeddings = base.get_input_embeddings()
    device = getattr(getattr(embeddings, "_hf_hook", None), "execution_device", None)
    return embeddings.weight.device if device is None else torch.device(device)


def _same_length_batches(examples: list[TrainingExample], lengths: list[int]) -> list[list[TrainingExample]]:
    """`examples` of the given prompt lengths (the lengths they were built for) in batches of one length of at most
    `BATCH_TOKENS` tokens, taken from windows of the list in order, so that an interrupted run has covered every form
    and length evenly."""
    batches = []
    for start in range(0, len(examples), BATCH_WINDOW):
        window = sorted(
            zip(lengths[start : start + BATCH_WINDOW], examples[start : start + BATCH_WINDOW]), key=itemgetter(0)
        )
        for length, group in itertools.groupby(window, key=itemgetter(0)):
            group = [example for _, example in group]
            size = max(1, BATCH_TOKENS // length)
            batches += [group[i : i + size] for i in range(0, len(group), size)]
    return batches
