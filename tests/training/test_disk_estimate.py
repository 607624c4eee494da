"""`lookahead-cache train` estimates its stored files before anything heavy, refuses a store that does not fit the
free disk, and resolves `--store-prompt-kv auto` from the estimate."""

import json
import types
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from lookahead_cache.cli import main
from lookahead_cache.training import disk_estimate
from lookahead_cache.training.config import TrainingConfig
from lookahead_cache.training.data import read_config_data
from lookahead_cache.training.disk_estimate import (
    DiskEstimate,
    choose_store_prompt_kv,
    estimate_disk,
    folder_bytes,
)

PROMPTS = [
    {"prompt": "The red door's code is 4412. The blue door's code is 9031. What is the red door's code?"},
    {"messages": [{"role": "user", "content": "List three prime numbers and say which is largest."}]},
    {"prompt": "Summarise: the cat sat on the mat, then it slept in the sun all afternoon, and woke at dusk."},
    {"prompt": "Count the vowels in the word 'encyclopaedia' and give the count."},
]


def write_data(path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in PROMPTS))
    return path


def train_argv(model_dir, data, out, *extra):
    argv = ["train", "--model", str(model_dir), "--data", str(data), "--out", str(out), "--validation-fraction", "0.25"]
    argv += ["--tasks", "niah_single_noise", "--lengths", "256", "--samples-per-task", "2"]
    argv += ["--validation-samples-per-task", "1", "--response-tokens", "3", "--num-tokens", "2"]
    return argv + ["--grad-accum", "1", "--warmup-steps", "0", *extra]


def stored_sizes(run: Path) -> tuple[int, int]:
    """(training, validation) bytes of a run folder's stored files."""
    training = folder_bytes(run / "prompt_kv") + folder_bytes(run / "targets")
    validation = folder_bytes(run / "validation" / "prompt_kv") + folder_bytes(run / "validation" / "targets")
    return training, validation


def free_disk_of(monkeypatch, free: int) -> None:
    monkeypatch.setattr(disk_estimate.shutil, "disk_usage", lambda path: types.SimpleNamespace(free=free))


def test_the_estimate_matches_what_a_stored_run_writes(tiny_model_dir, tmp_path, capsys):
    data = write_data(tmp_path / "mine.jsonl")
    run = tmp_path / "run"
    assert main(train_argv(tiny_model_dir, data, run, "--store-prompt-kv", "--responses-only")) == 0
    printed = capsys.readouterr().out
    assert "Disk: storing the training prompts' keys, values and targets (--store-prompt-kv) takes about" in printed
    assert "Path (--store-prompt-kv): store each prompt's keys, values and target" in printed
    config = TrainingConfig.from_json_file(run / "training_config.json")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    user_data = read_config_data(model, tokenizer, config)
    fresh = estimate_disk(model, config, tmp_path / "not-made-yet" / "run", user_data)
    training, validation = stored_sizes(run)
    # Five training prompts (two of the form, three of the data), two validation prompts (one of each).
    assert (fresh.training_prompts, fresh.validation_prompts) == (5, 2)
    assert (
        len(list((run / "prompt_kv").iterdir())) == 5 and len(list((run / "validation" / "prompt_kv").iterdir())) == 2
    )
    # The built-in prompts count at their nominal length, a little above what they take: an upper bound within 10%.
    assert training <= fresh.training_bytes <= 1.1 * training
    assert validation <= fresh.validation_bytes <= 1.1 * validation
    assert fresh.stored_training_bytes == fresh.stored_validation_bytes == 0
    # On the run folder, what is stored counts as stored: a resumed run needs (almost) nothing more.
    resumed = estimate_disk(model, config, run, user_data)
    assert (resumed.stored_training_bytes, resumed.stored_validation_bytes) == (training, validation)
    assert resumed.training_needed <= 0.1 * training and resumed.validation_needed <= 0.1 * validation


def test_a_store_that_does_not_fit_the_free_disk_is_refused_before_anything_heavy(
    tiny_model_dir, tmp_path, monkeypatch
):
    data = write_data(tmp_path / "mine.jsonl")
    run = tmp_path / "run"
    # The stores take about 320 KB (training) and 150 KB (validation).
    free_disk_of(monkeypatch, 200_000)
    with pytest.raises(ValueError, match=r"needs .* more on disk, but .* has 200\.0 KB free.*Drop --store-prompt-kv"):
        main(train_argv(tiny_model_dir, data, run, "--store-prompt-kv", "--responses-only"))
    assert not (run / "responses.jsonl").exists() and not (run / "training_config.json").exists()
    # Validation stores whatever the path: when even that does not fit, the run is refused too.
    free_disk_of(monkeypatch, 100_000)
    with pytest.raises(ValueError, match=r"validation prompts' stored keys.*Free space.*--validation-samples-per-task"):
        main(train_argv(tiny_model_dir, data, run, "--responses-only"))
    assert not (run / "responses.jsonl").exists()
    # With room for validation, the rerun path runs where the training store would not fit.
    free_disk_of(monkeypatch, 200_000)
    assert main(train_argv(tiny_model_dir, data, run, "--responses-only")) == 0
    assert not (run / "prompt_kv").exists() and (run / "validation" / "prompt_kv").is_dir()


def estimate(**counts) -> DiskEstimate:
    values = dict(token_bytes=1000, prompt_bytes=0, training_prompts=10, training_tokens=1000, validation_prompts=1)
    values.update(validation_tokens=100, stored_training_bytes=0, stored_validation_bytes=0, free_bytes=10**7)
    return DiskEstimate(folder=Path("run"), **{**values, **counts})


def test_auto_stores_when_the_store_fits_half_the_free_disk_and_prompts_are_reread():
    # 1 MB of training store, 0.1 MB of validation, 10 MB free.
    assert choose_store_prompt_kv("auto", estimate(), epochs=2)[0] is True
    store, why = choose_store_prompt_kv("auto", estimate(), epochs=1)
    assert store is False and "one epoch reads each prompt once" in why
    store, why = choose_store_prompt_kv("auto", estimate(free_bytes=2_000_000), epochs=3)
    assert store is False and "more than 50% of the free disk" in why
    # What a resumed run stored already counts: the rest fits.
    assert choose_store_prompt_kv("auto", estimate(free_bytes=2_000_000, stored_training_bytes=500_000), epochs=3)[0]
    # A resumed run keeps its recorded choice, so that it resumes as the same run.
    assert choose_store_prompt_kv("auto", estimate(), epochs=2, recorded=False) == (
        False,
        "--store-prompt-kv auto keeps the choice of the run it resumes",
    )
    with pytest.raises(ValueError, match="Drop --store-prompt-kv"):
        choose_store_prompt_kv("auto", estimate(free_bytes=500_000), epochs=2, recorded=True)
    # Asked for, a store that fits (if only just) is taken; one that does not is refused.
    assert choose_store_prompt_kv(True, estimate(free_bytes=1_100_000), epochs=1)[0] is True
    with pytest.raises(ValueError, match="Drop --store-prompt-kv"):
        choose_store_prompt_kv(True, estimate(free_bytes=1_099_999), epochs=1)
    assert choose_store_prompt_kv(False, estimate(free_bytes=100_000), epochs=2)[0] is False


def test_train_resolves_auto_before_its_config_is_recorded_and_keeps_it_on_resume(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    data = write_data(tmp_path / "mine.jsonl")
    run = tmp_path / "run"
    argv = train_argv(tiny_model_dir, data, run, "--store-prompt-kv", "auto", "--epochs", "2", "--responses-only")
    assert main(argv) == 0
    assert "the stores fit within 50% of the free disk, and 2 epochs" in capsys.readouterr().out
    assert json.loads((run / "training_config.json").read_text())["store_prompt_kv"] is True
    assert (run / "prompt_kv").is_dir()
    # Resumed with less free disk than a new run would store with, auto keeps the run's recorded choice.
    free_disk_of(monkeypatch, 100_000)
    assert main(argv) == 0
    assert "keeps the choice of the run it resumes" in capsys.readouterr().out
    # One epoch: nothing to reread, so auto reruns the prompts.
    other = tmp_path / "other"
    monkeypatch.undo()
    assert (
        main(train_argv(tiny_model_dir, data, other, "--store-prompt-kv", "auto", "--epochs", "1", "--responses-only"))
        == 0
    )
    assert json.loads((other / "training_config.json").read_text())["store_prompt_kv"] is False
    assert not (other / "prompt_kv").exists()
