"""Training lookahead modules on the embedded SmolLM2 model: the whole pipeline, small, interrupted and resumed."""

import copy
import json

import pytest
import torch

from lookahead_cache.adapters import get_lookahead, load_lookahead
from lookahead_cache.training import TrainingConfig, train
from lookahead_cache.training import trainer as trainer_module
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
    )
    return TrainingConfig(**{**settings, **overrides})


def test_targets_are_the_responses_attention_per_layer_and_head(default_model, tmp_path):
    model, tokenizer = default_model
    examples = prepare_examples(model, tokenizer, small_config(), tmp_path)
    assert len(examples) == 2
    for example in examples:
        target = example.target()
        assert target.shape == (30, 3, len(example.input_ids))
        torch.testing.assert_close(target.sum(-1), torch.ones(30, 3))
        assert 1 <= len(example.response_ids) <= 4
    # Cached: a second call generates nothing and returns the same examples.
    again = prepare_examples(model, tokenizer, small_config(), tmp_path)
    assert [e.response_ids for e in again] == [e.response_ids for e in examples]


def test_training_resumes_after_an_interruption_and_saves_a_loadable_adapter(default_model, tmp_path, monkeypatch):
    base, tokenizer = default_model
    config = small_config()
    real_loss, calls = trainer_module.example_loss, []

    def interrupted(model, example):
        calls.append(example.sample_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(model, example)

    monkeypatch.setattr(trainer_module, "example_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(copy.deepcopy(base), tokenizer, config, tmp_path)
    logged = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2]
    assert json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["step"] == 2

    monkeypatch.setattr(trainer_module, "example_loss", real_loss)
    model = train(copy.deepcopy(base), tokenizer, config, tmp_path)
    logged = [json.loads(line) for line in (tmp_path / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2, 3, 4]
    assert (tmp_path / "loss.png").stat().st_size > 0
    saved = json.loads((tmp_path / "adapter" / "lookahead_config.json").read_text())
    assert saved["training"]["steps"].startswith("4 optimizer steps")
    assert "final_loss" in saved["training"]
    reloaded = load_lookahead(copy.deepcopy(base), tmp_path / "adapter", tokenizer=tokenizer)
    assert torch.equal(get_lookahead(reloaded).embeddings, get_lookahead(model).embeddings)

    with pytest.raises(ValueError, match="other settings"):
        train(copy.deepcopy(base), tokenizer, small_config(epochs=3), tmp_path)
