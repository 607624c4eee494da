"""The training mix and its responses, on tiny random models: fast tests of what the slow pipeline tests rely on."""

import copy
import json

import pytest
import torch
from conftest import prompt_ids, tiny_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from lookahead_cache.evaluation.replay import continue_recording, record_prefill
from lookahead_cache.training import TrainingConfig, train
from lookahead_cache.training import data as data_module
from lookahead_cache.training import trainer as trainer_module
from lookahead_cache.training.data import (
    build_prompts,
    greedy_responses,
    prepare_examples,
    responses_settings_path,
)


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_batched_greedy_responses_are_each_prompts_own(architecture):
    model = tiny_model(architecture)
    model.generation_config.eos_token_id = 5
    prompts = [prompt_ids(length, seed=length) for length in (19, 23, 16)]
    recordings = [record_prefill(model, ids) for ids in prompts]
    batched = greedy_responses(model, recordings, max_new_tokens=12)
    for ids, recording, response in zip(prompts, recordings, batched):
        first = recording.next_token_logits.argmax(-1, keepdim=True)
        alone = continue_recording(model, ids, recording, first, 12, do_sample=False, eos_token_id=5)[0].tolist()
        if 5 in alone:
            alone = alone[: alone.index(5) + 1]
        assert response == alone
        assert greedy_responses(model, [recording], max_new_tokens=12) == [alone]


@pytest.fixture(scope="module")
def tiny_with_tokenizer(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def mix_config(**overrides):
    settings = dict(
        tasks=["niah_single_noise", "common_words"],
        lengths=[512, 1024],
        samples_per_task=[2, 1],
        validation_samples_per_task=0,
        response_tokens=3,
    )
    return TrainingConfig(**{**settings, **overrides})


def test_prompts_come_index_first_and_are_named_by_sample_and_seed(tiny_with_tokenizer):
    _, tokenizer = tiny_with_tokenizer
    prompts = build_prompts(tokenizer, mix_config())
    assert list(prompts) == [
        "niah_single_noise/512/0@1000",
        "common_words/512/0@1000",
        "niah_single_noise/1024/0@1000",
        "common_words/1024/0@1000",
        "niah_single_noise/512/1@1000",
        "common_words/512/1@1000",
    ]
    validation = build_prompts(tokenizer, mix_config(validation_samples_per_task=[0, 1]), validation=True)
    assert list(validation) == ["niah_single_noise/1024/0@2000", "common_words/1024/0@2000"]
    assert validation["niah_single_noise/1024/0@2000"] != prompts["niah_single_noise/1024/0@1000"]


def test_a_shared_responses_file_lets_another_run_folder_skip_making_them(tiny_with_tokenizer, tmp_path, monkeypatch):
    model, tokenizer = tiny_with_tokenizer
    shared = tmp_path / "committed" / "responses.jsonl"
    made = prepare_examples(model, tokenizer, mix_config(), tmp_path / "first", responses=shared)
    rows = [json.loads(line) for line in shared.read_text().splitlines()]
    # Made in batches of one length, listed in the order made; the examples keep the mix's order.
    assert [row["key"] for row in rows] == sorted((e.sample_id for e in made), key=lambda key: "/1024/" in key)
    assert all(1 <= len(row["response_ids"]) <= 3 and row["prompt_tokens"] <= 1024 for row in rows)
    assert not (tmp_path / "first").exists() or not any((tmp_path / "first").iterdir())

    def no_decoding(*args, **kwargs):
        raise AssertionError("responses were made again")

    monkeypatch.setattr(data_module, "greedy_responses", no_decoding)
    again = prepare_examples(model, tokenizer, mix_config(), tmp_path / "second", responses=shared)
    assert [(e.sample_id, e.input_ids, e.response_ids) for e in again] == [
        (e.sample_id, e.input_ids, e.response_ids) for e in made
    ]
    # Stored keys, values and targets are recomputed from the responses, without decoding.
    stored = prepare_examples(model, tokenizer, mix_config(store_prompt_kv=True), tmp_path / "third", responses=shared)
    for example in stored:
        target = example.stored_target()
        assert target.shape == (2, 2, len(example.input_ids))
        torch.testing.assert_close(target.sum(-1), torch.ones(2, 2))


def test_responses_of_another_prompt_model_or_length_are_refused(tiny_with_tokenizer, tmp_path):
    model, tokenizer = tiny_with_tokenizer
    shared = tmp_path / "responses.jsonl"
    prepare_examples(model, tokenizer, mix_config(samples_per_task=[1, 0]), tmp_path / "run", responses=shared)
    with pytest.raises(ValueError, match="response_tokens 3.*response_tokens 4"):
        prepare_examples(model, tokenizer, mix_config(response_tokens=4), tmp_path / "run", responses=shared)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.lm_head.weight.mul_(2)
    with pytest.raises(ValueError, match="model_sha256"):
        prepare_examples(other, tokenizer, mix_config(), tmp_path / "run", responses=shared)
    rows = shared.read_text().splitlines()
    tampered = json.loads(rows[0]) | {"prompt_sha256": "0" * 16}
    shared.write_text(json.dumps(tampered) + "\n" + "\n".join(rows[1:]))
    with pytest.raises(ValueError, match="is not the one .* answered.*another Python version"):
        prepare_examples(model, tokenizer, mix_config(), tmp_path / "run", responses=shared)
    responses_settings_path(shared).unlink()
    with pytest.raises(ValueError, match="not the settings file"):
        prepare_examples(model, tokenizer, mix_config(), tmp_path / "run", responses=shared)


def test_responses_made_in_the_training_steps_are_those_made_before_and_train_alike(
    tiny_with_tokenizer, tmp_path, monkeypatch
):
    model, tokenizer = tiny_with_tokenizer
    config = mix_config(epochs=1, gradient_accumulation=2, warmup_steps=0, num_tokens=2, save_every=1)
    made_first = tmp_path / "made_first.jsonl"
    prepare_examples(model, tokenizer, config, tmp_path / "prepared", responses=made_first)
    train(copy.deepcopy(model), tokenizer, config, tmp_path / "before", responses=made_first)

    prefills = []
    real_make_responses = trainer_module.make_responses
    monkeypatch.setattr(
        trainer_module, "make_responses", lambda *args, **kwargs: prefills.append(args[1]) or real_make_responses(*args)
    )
    train(copy.deepcopy(model), tokenizer, config, tmp_path / "in_steps")
    # Made step by step, two prompts at a time, in the training order.
    assert [len(batch) for batch in prefills] == [2, 2, 2]

    def rows(path):
        return {row["key"]: row for row in map(json.loads, path.read_text().splitlines())}

    assert rows(tmp_path / "in_steps" / "responses.jsonl") == rows(made_first)
    logs = [rows_of(tmp_path / run / "loss.jsonl") for run in ("before", "in_steps")]
    assert [r["step"] for r in logs[0]] == [r["step"] for r in logs[1]] == [1, 2, 3]
    for before, in_steps in zip(*logs):
        assert in_steps["loss"] == pytest.approx(before["loss"], rel=1e-5)


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]
