"""The training data: offline prompts, the frozen model's own greedy responses, and their attention to the prompt.

Everything is cached under the run's folder (`examples.jsonl` plus one safetensors target per prompt) and reused
when the run resumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..evaluation.replay import continue_recording, future_queries, record_prefill
from ..evaluation.tasks import Sample, get_task
from ..scorers.future_queries import FutureQueriesScorer
from .config import TrainingConfig

EXAMPLES_NAME = "examples.jsonl"
TARGETS_DIR = "targets"


@dataclass
class TrainingExample:
    """One prompt, the frozen model's greedy response to it, and where its target attention is stored.

    The target (`[layers, kv_heads, prompt_len]` float32, each row summing to 1) is the mean softmax attention that
    the response tokens pay to the prompt, per layer and KV head: what the lookahead tokens learn to predict.
    """

    sample_id: str
    input_ids: list[int]
    response_ids: list[int]
    target_path: Path

    def target(self) -> torch.Tensor:
        return load_file(str(self.target_path))["target"]


def build_prompts(tokenizer: PreTrainedTokenizerBase, config: TrainingConfig) -> list[Sample]:
    """The training mix: `samples_per_task` prompts per family and length, drawn with the training seed."""
    return [
        sample
        for length in config.lengths
        for name in config.tasks
        for sample in get_task(name).build(tokenizer, length, config.samples_per_task, config.seed)
    ]


@torch.no_grad()
def response_and_target(
    model: PreTrainedModel, input_ids: torch.Tensor, max_new_tokens: int, eos_token_id
) -> tuple[torch.Tensor, torch.Tensor]:
    """The greedy response `[1, n]` of `model` to `input_ids` (`[1, T]`) and its target attention."""
    recording = record_prefill(model, input_ids)
    first = recording.next_token_logits.argmax(-1, keepdim=True)
    response = continue_recording(
        model, input_ids, recording, first, max_new_tokens, do_sample=False, eos_token_id=eos_token_id
    )
    # The oracle's scores: what the response's queries attend to in the prompt, per layer and KV head.
    scorer = FutureQueriesScorer(future_queries(model, recording.prefills, response))
    target = torch.cat([scorer.score(prefill) for prefill in recording.prefills])
    return response, target


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
    done: dict[str, TrainingExample] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            example = TrainingExample(
                record["sample_id"], record["input_ids"], record["response_ids"], targets / record["target"]
            )
            if example.target_path.is_file():
                done[example.sample_id] = example
    eos = model.generation_config.eos_token_id
    with path.open("a") as file:
        for sample in tqdm(samples, desc="responses", unit="prompt", disable=disable_progress):
            if sample.id in done:
                continue
            context_ids, question_ids = sample.prompt_ids(tokenizer)
            input_ids = torch.cat([context_ids, question_ids], dim=-1).to(model.device)
            response, target = response_and_target(model, input_ids, config.response_tokens, eos)
            name = sample.id.replace("/", "_") + ".safetensors"
            save_file({"target": target.float().cpu().contiguous()}, str(targets / name))
            record = {
                "sample_id": sample.id,
                "input_ids": input_ids[0].tolist(),
                "response_ids": response[0].tolist(),
                "target": name,
            }
            file.write(json.dumps(record) + "\n")
            file.flush()
            done[sample.id] = TrainingExample(sample.id, record["input_ids"], record["response_ids"], targets / name)
    return [done[sample.id] for sample in samples]
