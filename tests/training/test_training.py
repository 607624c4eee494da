"""Training lookahead modules on the embedded SmolLM2 model: the whole pipeline, small, interrupted and resumed."""

import copy
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import interrupt_training
from safetensors.torch import load_file

from lookahead_cache.adapters import get_lookahead, load_lookahead
from lookahead_cache.evaluation.replay import record_prefill
from lookahead_cache.training import TrainingConfig, train
from lookahead_cache.training.data import prepare_examples

pytestmark = pytest.mark.slow


def small_config(**overrides):
    settings = dict(
        tasks=["niah_single_noise"],
        lengths=[384],
        samples_per_task=2,
        response_tokens=4,
        epochs=2,
        gradient_accumulation=1,
        warmup_steps=1,
        save_every=1,
        num_tokens=4,
        validation_samples_per_task=0,
        store_prompt_kv=True,
    )
    return TrainingConfig(**{**settings, **overrides})


def test_targets_are_the_responses_attention_per_layer_and_head(default_model, tmp_path):
    model, tokenizer = default_model
    examples = prepare_examples(model, tokenizer, small_config(), tmp_path)
    assert len(examples) == 2
    for example in examples:
        target = example.stored_target()
        assert target.shape == (30, 3, len(example.input_ids))
        torch.testing.assert_close(target.sum(-1), torch.ones(30, 3))
        assert 1 <= len(example.response_ids) <= 4
    # Cached: a second call generates nothing and returns the same examples.
    again = prepare_examples(model, tokenizer, small_config(), tmp_path)
    assert [e.response_ids for e in again] == [e.response_ids for e in examples]


def test_stored_prompt_keys_and_values_are_the_models_and_runs_without_them_get_them_on_resume(default_model, tmp_path):
    model, tokenizer = default_model
    without = prepare_examples(model, tokenizer, small_config(store_prompt_kv=False), tmp_path)
    assert all(example.prompt_kv_path is None for example in without)
    assert not (tmp_path / "prompt_kv").exists()
    # The same run folder prepared again with storage on: the responses are reused, the keys and values added.
    stored = prepare_examples(model, tokenizer, small_config(), tmp_path)
    assert [e.response_ids for e in stored] == [e.response_ids for e in without]
    for example in stored:
        recording = record_prefill(model, torch.tensor([example.input_ids]))
        prefills = example.stored_prefills({prefill.layer_idx: prefill.module for prefill in recording.prefills})
        assert len(prefills) == len(recording.prefills) == 30
        for loaded, live in zip(prefills, recording.prefills):
            assert torch.equal(loaded.keys, live.keys) and torch.equal(loaded.values, live.values)
        with pytest.raises(ValueError, match="kept only the prompt's keys and values"):
            prefills[0].queries(0)


def test_training_from_stored_prompts_matches_training_that_reruns_them(default_model, tmp_path):
    base, tokenizer = default_model
    config = small_config(epochs=1, validation_samples_per_task=1)
    train(copy.deepcopy(base), tokenizer, config, tmp_path / "stored")
    train(
        copy.deepcopy(base),
        tokenizer,
        small_config(epochs=1, validation_samples_per_task=1, store_prompt_kv=False),
        tmp_path / "rerun",
    )
    stored, rerun = (
        [json.loads(line) for line in (tmp_path / run / "loss.jsonl").read_text().splitlines()]
        for run in ("stored", "rerun")
    )
    assert [r["step"] for r in stored] == [r["step"] for r in rerun] == [1, 2]
    for a, b in zip(stored, rerun):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        # Validation runs at every checkpoint (save_every=1), on prompts of another seed.
        assert a["validation_loss"] == pytest.approx(b["validation_loss"], rel=1e-5)
    assert stored[1]["validation_loss"] != stored[0]["validation_loss"]
    # Training and validation responses share the run's responses file, named by their seeds.
    rows = [json.loads(line) for line in (tmp_path / "stored" / "responses.jsonl").read_text().splitlines()]
    validation = [row for row in rows if row["key"].endswith("@2000")]
    assert len(validation) == 1 and len(rows) == 3
    assert all(row["prompt_sha256"] != validation[0]["prompt_sha256"] for row in rows if row not in validation)
    recipe = json.loads((tmp_path / "stored" / "adapter" / "lookahead_config.json").read_text())["training"]
    assert "on 1 prompts of the same forms, seed 2000" in recipe["validation_loss"]
    # The checkpoint of lowest validation KL is kept as an adapter of its own, its recipe naming the step.
    best_step = min(stored, key=lambda r: r["validation_loss"])["step"]
    best = json.loads((tmp_path / "stored" / "best_adapter" / "lookahead_config.json").read_text())["training"]
    assert f"lowest {min(r['validation_loss'] for r in stored):.4f} at step {best_step}" in best["validation_loss"]

    with pytest.raises(ValueError, match="validation_seed equals seed"):
        small_config(validation_samples_per_task=1, validation_seed=1000)


def test_training_resumes_after_an_interruption_and_saves_a_loadable_adapter(default_model, tmp_path, monkeypatch):
    base, tokenizer = default_model
    config = small_config()
    resume = interrupt_training(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        train(copy.deepcopy(base), tokenizer, config, tmp_path)
    logged = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]
    assert json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["step"] == 2

    resume()
    model = train(copy.deepcopy(base), tokenizer, config, tmp_path)
    logged = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert (tmp_path / "loss.png").stat().st_size > 0
    saved = json.loads((tmp_path / "adapter" / "lookahead_config.json").read_text())
    assert saved["training"]["steps"].startswith("4 optimizer steps")
    assert "final_loss" in saved["training"]
    reloaded = load_lookahead(copy.deepcopy(base), tmp_path / "adapter", tokenizer=tokenizer)
    assert torch.equal(get_lookahead(reloaded).embeddings, get_lookahead(model).embeddings)

    with pytest.raises(ValueError, match="holds a run with epochs 2; this call has epochs 3: pass the same settings"):
        train(copy.deepcopy(base), tokenizer, small_config(epochs=3), tmp_path)


def test_distributed_training_averages_gradients_like_one_process(tiny_model_dir, tmp_path):
    # Two processes with one prompt per step each must take the optimizer steps one process takes with two.
    # torchrun starts them; ACCELERATE_USE_CPU puts accelerate in its multi-CPU (gloo) mode, the code path that
    # `accelerate launch --multi_gpu` takes on GPUs.
    train_args = ["train", "--model", str(tiny_model_dir), "--tasks", "niah_single_noise", "--lengths", "384"]
    train_args += ["--samples-per-task", "4", "--response-tokens", "4", "--epochs", "1", "--num-tokens", "4"]
    train_args += ["--warmup-steps", "0", "--validation-samples-per-task", "0"]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "lookahead_cache.cli", *train_args, "--grad-accum", "2", "--out", str(tmp_path / "one")],
        check=True,
        env=environment,
    )
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "lookahead_cache.cli"]
        + [*train_args, "--grad-accum", "1", "--out", str(tmp_path / "two")],
        check=True,
        env=environment,
    )
    one = [json.loads(line) for line in (tmp_path / "one" / "loss.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2]
    for a, b in zip(one, two):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4) and a["grad_norm"] == pytest.approx(
            b["grad_norm"], rel=1e-3
        )
    for name in ("adapter_model.safetensors", "lookahead_embeddings.safetensors"):
        trained_alone, trained_together = (load_file(str(tmp_path / run / "adapter" / name)) for run in ("one", "two"))
        assert trained_alone.keys() == trained_together.keys()
        for key in trained_alone:
            torch.testing.assert_close(trained_alone[key], trained_together[key], rtol=1e-4, atol=1e-6)
