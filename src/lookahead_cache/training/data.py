"""The training data: offline prompts, the frozen model's own greedy responses, and their attention to the prompt.

Everything is cached under the run's folder (`examples.jsonl`, one safetensors target per prompt and, unless the
config says not to, the prompt's keys and values) and reused when the run resumes; a cached file that does not read
back stops the run, naming it (deleting it has it made again). Stored keys and values spare every
training step its prompt forward, which is most of a step's time; they take `layers x kv_heads x head_dim x 2` values
per prompt token on disk (90 MiB for a 2048-token SmolLM2-135M prompt in float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..evaluation.replay import PrefillRecording, continue_recording, future_queries, record_prefill
from ..evaluation.tasks import Sample, get_task
from ..prefill import LayerPrefill
from ..run_folder import append_jsonl, load_safetensors, read_jsonl, safetensors_metadata, save_safetensors
from ..scorers.future_queries import FutureQueriesScorer
from .config import TrainingConfig

EXAMPLES_NAME = "examples.jsonl"
TARGETS_DIR = "targets"
PROMPT_KV_DIR = "prompt_kv"


@dataclass
class TrainingExample:
    """One prompt, the frozen model's greedy response to it, and where its target attention is stored.

    The target (`[layers, kv_heads, prompt_len]` float32, each row summing to 1) is the mean softmax attention that
    the response tokens pay to the prompt, per layer and KV head: what the lookahead tokens learn to predict.
    `prompt_kv_path`, when set, holds the frozen model's keys and values of the prompt.
    """

    sample_id: str
    input_ids: list[int]
    response_ids: list[int]
    target_path: Path
    prompt_kv_path: Path | None = None

    def target(self) -> torch.Tensor:
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


def build_prompts(tokenizer: PreTrainedTokenizerBase, config: TrainingConfig, validation: bool = False) -> list[Sample]:
    """The training mix: `samples_per_task` prompts per family and length, drawn with the training seed; or, with
    `validation`, `validation_samples_per_task` of them drawn with the validation seed."""
    count, seed = (
        (config.validation_samples_per_task, config.validation_seed)
        if validation
        else (config.samples_per_task, config.seed)
    )
    return [
        sample
        for length in config.lengths
        for name in config.tasks
        for sample in get_task(name).build(tokenizer, length, count, seed)
    ]


@torch.no_grad()
def response_and_target(
    model: PreTrainedModel, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id
) -> tuple[PrefillRecording, torch.Tensor, torch.Tensor]:
    """The prompt's recorded prefill, the greedy response `[1, n]` of `model` to `input_ids` (`[1, T]`) and its
    target attention."""
    recording = record_prefill(model, input_ids)
    first = recording.next_token_logits.argmax(-1, keepdim=True)
    response = continue_recording(
        model, input_ids, recording, first, max_new_tokens, do_sample=False, eos_token_id=eos_token_id
    )
    # The oracle's scores: what the response's queries attend to in the prompt, per layer and KV head.
    scorer = FutureQueriesScorer(future_queries(model, recording.prefills, response))
    target = torch.cat([scorer.score(prefill) for prefill in recording.prefills])
    return recording, response, target


def prepare_examples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: TrainingConfig,
    out_dir: Path,
    samples: list[Sample] | None = None,
    disable_progress: bool = False,
) -> list[TrainingExample]:
    """Build (or reload) the training examples under `out_dir`: responses once, cached on disk, resumable."""
    samples = build_prompts(tokenizer, config) if samples is None else samples
    path = out_dir / EXAMPLES_NAME
    targets = out_dir / TARGETS_DIR
    targets.mkdir(parents=True, exist_ok=True)
    prompt_kv = out_dir / PROMPT_KV_DIR
    if config.store_prompt_kv:
        prompt_kv.mkdir(exist_ok=True)
    done: dict[str, TrainingExample] = {}
    for record in read_jsonl(path):
        example = TrainingExample(
            record["sample_id"], record["input_ids"], record["response_ids"], targets / record["target"]
        )
        if example.target_path.is_file():
            # Read now, from the header alone: a damaged file is named before any training, not at its first step.
            safetensors_metadata(example.target_path)
            done[example.sample_id] = example
    eos = model.generation_config.eos_token_id
    with append_jsonl(path) as append:
        for sample in tqdm(samples, desc="responses", unit="prompt", disable=disable_progress):
            name = sample.id.replace("/", "_") + ".safetensors"
            kv_path = prompt_kv / name if config.store_prompt_kv else None
            example = done.get(sample.id)
            if example is not None:
                if kv_path is not None and not kv_path.is_file():
                    input_ids = torch.tensor([example.input_ids], device=model.device)
                    _store_prompt_kv(record_prefill(model, input_ids), kv_path)
                elif kv_path is not None:
                    safetensors_metadata(kv_path)
                example.prompt_kv_path = kv_path
                continue
            context_ids, question_ids = sample.prompt_ids(tokenizer)
            input_ids = torch.cat([context_ids, question_ids], dim=-1).to(model.device)
            recording, response, target = response_and_target(model, input_ids, config.response_tokens, eos)
            if kv_path is not None:
                # Written before the example is listed, so a listed example always has its keys and values.
                _store_prompt_kv(recording, kv_path)
            save_safetensors({"target": target.float().cpu().contiguous()}, targets / name)
            record = {
                "sample_id": sample.id,
                "input_ids": input_ids[0].tolist(),
                "response_ids": response[0].tolist(),
                "target": name,
            }
            append(record)
            done[sample.id] = TrainingExample(
                sample.id, record["input_ids"], record["response_ids"], targets / name, kv_path
            )
    return [done[sample.id] for sample in samples]
