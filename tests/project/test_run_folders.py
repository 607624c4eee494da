"""Run folders of eval, train and profile: a resumed run continues only the run it finds, JSON-lines files survive
an interrupted write, and damaged files are named with their fix."""

import importlib.util
import json
import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import synthetic_profile
from transformers import AutoModelForCausalLM, AutoTokenizer

from lookahead_cache.cli import main
from lookahead_cache.run_folder import append_jsonl, model_fingerprint, read_jsonl

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def no_figures():
    """The commands here are checked for what they resume; the figures they end with are test_report's and
    test_lukv's, and would take most of each call's time."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("lookahead_cache.evaluation.report.plot_accuracy_vs_budget", lambda *args: [])
        patch.setattr("lookahead_cache.profiling.profile.HeadProfile.plot", lambda *args: None)
        patch.setattr("lookahead_cache.training.trainer.plot_loss", lambda *args: None)
        yield


# ----- the JSON-lines helpers, on their own ------------------------------------------------------------------------

ROW_1, ROW_2 = b'{"step": 1}', b'{"step": 2}'


@pytest.fixture
def logged(caplog):
    """The warnings of lookahead_cache's loggers, which the command line stops from reaching the root logger."""
    library = logging.getLogger("lookahead_cache")
    library.addHandler(caplog.handler)
    yield caplog
    library.removeHandler(caplog.handler)


@pytest.mark.parametrize(
    "content, rows, after_append, warning",
    [
        (b"", [], ROW_2 + b"\n", None),
        (ROW_1 + b"\n", [1], ROW_1 + b"\n" + ROW_2 + b"\n", None),
        (ROW_1 + b"\n\n", [1], ROW_1 + b"\n\n" + ROW_2 + b"\n", None),
        # A whole last row that lacks its newline: kept, and the next row starts a line of its own.
        (ROW_1, [1], ROW_1 + b"\n" + ROW_2 + b"\n", None),
        # A torn last line (an interrupted append): left out with a warning, cut off before the next row.
        (ROW_1 + b'\n{"step": 2, "lo', [1], ROW_1 + b"\n" + ROW_2 + b"\n", ":2: the last line was cut short"),
        (b'{"st', [], ROW_2 + b"\n", ":1: the last line was cut short"),
        # Cut inside a character of two bytes.
        (ROW_1 + b'\n{"name": "\xc3', [1], ROW_1 + b"\n" + ROW_2 + b"\n", ":2: the last line was cut short"),
    ],
    ids=["empty", "whole", "blank-line", "no-newline", "torn", "torn-only-line", "torn-in-a-character"],
)
def test_read_and_append_survive_an_interrupted_write(tmp_path, logged, content, rows, after_append, warning):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    assert [row["step"] for row in read_jsonl(path)] == rows
    assert (f"{path}{warning}" in logged.text) if warning else not logged.records
    with append_jsonl(path) as append:
        append({"step": 2})
    assert path.read_bytes() == after_append


@pytest.mark.parametrize("content", [b"", ROW_1, ROW_1 + b"\n", ROW_1 + b'\n{"step": 2, "lo', b'{"st'])
def test_the_kvpress_runner_appends_after_the_same_line_boundary(tmp_path, content):
    """scripts/kvpress/run_kvpress.py runs in a venv that cannot import the package: its own guard before appending
    leaves the file as `append_jsonl` would."""
    spec = importlib.util.spec_from_file_location("run_kvpress", REPOSITORY / "scripts" / "kvpress" / "run_kvpress.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    ours, theirs = tmp_path / "ours.jsonl", tmp_path / "theirs.jsonl"
    ours.write_bytes(content)
    theirs.write_bytes(content)
    with append_jsonl(ours):
        pass
    runner.end_at_line_boundary(theirs)
    assert theirs.read_bytes() == ours.read_bytes()


@pytest.mark.parametrize(
    "content, message",
    [
        (ROW_1 + b'\n{"step": \n' + ROW_2 + b"\n", ":2: not valid JSON"),
        (ROW_1 + b'\n{"step": 2, "lo\n', ":2: not valid JSON"),  # its newline says it was written whole
        (ROW_1 + b"\n[1, 2]\n", ":2: expected a JSON object, got list"),
    ],
    ids=["before-the-last", "last-with-newline", "not-an-object"],
)
def test_a_damaged_line_before_the_end_is_an_error_naming_file_and_line(tmp_path, content, message):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}{message}")):
        read_jsonl(path)


# ----- eval -----------------------------------------------------------------------------------------------------


def other_weights(source, destination, seed=1):
    """A copy of the model folder `source` at `destination` with other weights: a retrained model."""
    model = AutoModelForCausalLM.from_pretrained(source)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.01)
    if source != destination:
        shutil.copytree(source, destination)
    model.save_pretrained(destination)
    return destination


def eval_argv(model_dir, out, *extra, methods=("full", "snapkv")):
    argv = ["eval", "--model", str(model_dir), "--tasks", "niah_single_noise", "--lengths", "512", "--samples", "1"]
    return [*argv, "--budgets", "64", "--methods", *methods, *extra, "--out", str(out)]


def files(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def prediction_lines(folder):
    return (folder / "predictions.jsonl").read_text().splitlines()


@pytest.fixture(scope="module")
def eval_run(tiny_model_dir, tmp_path_factory):
    """A finished eval of one sample (full and snapkv at budget 64) and the model folder that made it."""
    out = tmp_path_factory.mktemp("eval") / "out"
    assert main(eval_argv(tiny_model_dir, out)) == 0
    assert len(prediction_lines(out)) == 2
    return tiny_model_dir, out


@pytest.fixture
def resumed(eval_run, tmp_path):
    """A copy of the finished eval to resume, and the argv that made it."""
    model_dir, finished = eval_run
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out, eval_argv(model_dir, out)


def another_seed(argv, tmp_path, monkeypatch):
    return [*argv, "--seed", "1"]


def another_model(argv, tmp_path, monkeypatch):
    model = other_weights(argv[argv.index("--model") + 1], tmp_path / "other-model")
    return [*argv, "--model", str(model)]


def shorter_answers(argv, tmp_path, monkeypatch):
    from lookahead_cache.evaluation.tasks.niah_single_noise import NiahSingleNoise

    monkeypatch.setattr(NiahSingleNoise, "max_new_tokens", 8)
    return argv


@pytest.mark.parametrize(
    "rerun, message",
    [
        (another_seed, "holds a run with --seed 0; this call has --seed 1: "),
        (another_model, r"holds a run with --model \S+, model_sha256 \w{16}; this call has --model \S+other-model, "),
        (shorter_answers, "samples.jsonl holds sample niah_single_noise/512/0 with max_new_tokens 32; this call has "),
    ],
    ids=["seed", "model", "max-new-tokens"],
)
def test_eval_refuses_a_rerun_that_would_change_rows_and_leaves_the_folder_as_it_was(
    resumed, tmp_path, monkeypatch, rerun, message
):
    out, argv = resumed
    before = files(out)
    with pytest.raises(ValueError, match=message + ".*pass the same settings to resume, or a new --out"):
        main(rerun(argv, tmp_path, monkeypatch))
    assert files(out) == before


def test_eval_refuses_the_same_model_folder_with_other_weights(tiny_model_dir, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    argv = eval_argv(model_dir, tmp_path / "out", methods=["full"])
    assert main(argv) == 0
    before = files(tmp_path / "out")
    other_weights(model_dir, model_dir)
    with pytest.raises(ValueError, match=r"holds a run with model_sha256 [0-9a-f]{16}; this call has model_sha256 "):
        main(argv)
    assert files(tmp_path / "out") == before


def test_eval_rerun_with_the_same_settings_redoes_nothing(resumed, monkeypatch):
    from lookahead_cache.evaluation import suite

    out, argv = resumed
    before = files(out)
    monkeypatch.setattr(suite, "record_prefill", lambda *args: pytest.fail("recomputed a finished sample"))
    assert main(argv) == 0
    assert files(out) == before


def test_eval_adds_samples_to_a_run_without_redoing_its_rows(resumed, monkeypatch):
    from lookahead_cache.evaluation import suite

    out, argv = resumed
    rows_before, samples_before = prediction_lines(out), (out / "samples.jsonl").read_text()
    prefilled, record_prefill = [], suite.record_prefill
    monkeypatch.setattr(suite, "record_prefill", lambda *args: prefilled.append(1) or record_prefill(*args))
    argv[argv.index("--samples") + 1] = "2"
    assert main(argv) == 0
    # Sample 0 is the same whatever the count: only sample 1 is prefilled and answered.
    assert len(prefilled) == 1
    lines = prediction_lines(out)
    assert lines[:2] == rows_before and len(lines) == 4
    keys = [(row["sample_id"], row["method"], row["budget"]) for row in map(json.loads, lines)]
    assert len(set(keys)) == len(keys)
    samples = (out / "samples.jsonl").read_text()
    assert samples.startswith(samples_before) and len(samples.splitlines()) == 2
    assert json.loads((out / "settings.json").read_text())["samples_per_task_and_length"] == [1, 2]
    # A smaller count resumes the larger run: nothing to do.
    argv[argv.index("--samples") + 1] = "1"
    assert main(argv) == 0
    assert prediction_lines(out) == lines and len(prefilled) == 1


def test_eval_resumes_a_run_from_before_model_fingerprints_with_a_warning(resumed, logged):
    out, argv = resumed
    settings = json.loads((out / "settings.json").read_text())
    fingerprint = settings.pop("model_sha256")
    (out / "settings.json").write_text(json.dumps(settings))
    lines = prediction_lines(out)
    assert main(argv) == 0
    assert f"{out} does not record model_sha256 (an earlier version started it)" in logged.text
    assert prediction_lines(out) == lines
    assert json.loads((out / "settings.json").read_text())["model_sha256"] == fingerprint


def drop_last_row_and_its_newline(lines):
    return "\n".join(lines[:-1])


def tear_last_row(lines):
    return "\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2]


@pytest.mark.parametrize(
    "damage, warning",
    [(drop_last_row_and_its_newline, None), (tear_last_row, "predictions.jsonl:2: the last line was cut short")],
    ids=["last-row-without-newline", "torn-last-line"],
)
def test_eval_resumes_after_an_interrupted_append(resumed, logged, damage, warning):
    out, argv = resumed
    lines = prediction_lines(out)
    (out / "predictions.jsonl").write_text(damage(lines))
    assert main(argv) == 0
    assert (warning in logged.text) if warning else "cut short" not in logged.text
    redone = prediction_lines(out)
    assert redone[0] == lines[0] and len(redone) == 2
    rows = [json.loads(line) for line in redone]
    assert [(row["method"], row["budget"]) for row in rows] == [("full", None), ("snapkv", 64)]


def test_eval_refuses_a_damaged_line_before_the_last_naming_it(resumed):
    out, argv = resumed
    lines = prediction_lines(out)
    (out / "predictions.jsonl").write_text("\n".join([lines[0][:-3], *lines[1:]]) + "\n")
    before = files(out)
    with pytest.raises(ValueError, match=re.escape(f"{out / 'predictions.jsonl'}:1: not valid JSON")):
        main(argv)
    assert files(out) == before


def damage_json(path):
    path.write_text(path.read_text()[:-4])
    return re.escape(f"{path} is not valid JSON (") + ".*restore it, or start the run in a new --out"


def test_eval_names_a_damaged_settings_file_and_leaves_the_folder_as_it_was(resumed):
    out, argv = resumed
    message = damage_json(out / "settings.json")
    before = files(out)
    with pytest.raises(ValueError, match=message):
        main(argv)
    assert files(out) == before


def test_eval_refuses_lukv_rows_of_another_profile(tiny_model_dir, tmp_path):
    from lookahead_cache.adapters import LookaheadConfig, add_lookahead, get_lookahead
    from lookahead_cache.config import DEFAULT_SINK, DEFAULT_WINDOW

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # Held: the adapter saves through the PeftModel it belongs to, which it does not keep alive.
    with_adapter = add_lookahead(model, LookaheadConfig(num_tokens=4))
    get_lookahead(with_adapter).save_pretrained(tmp_path / "adapter")

    def save_profile(seed):
        profile = synthetic_profile(layers=2, seed=seed, model=model)
        replace(profile, sink=DEFAULT_SINK, window=DEFAULT_WINDOW).save_pretrained(tmp_path / "adapter")

    save_profile(seed=0)
    argv = eval_argv(tiny_model_dir, tmp_path / "out", "--adapter", str(tmp_path / "adapter"), methods=["full", "lukv"])
    assert main(argv) == 0
    fingerprint = json.loads(prediction_lines(tmp_path / "out")[1])["profile"]
    save_profile(seed=1)
    with pytest.raises(
        ValueError, match=rf"another lookahead adapter or LU-KV profile .*: lukv \(profile {fingerprint}\)"
    ):
        main(argv)


# ----- train ----------------------------------------------------------------------------------------------------


def tiny_training_config(**overrides):
    from lookahead_cache.training import TrainingConfig

    settings = {
        "tasks": ["niah_single_noise"],
        "lengths": [384],
        "samples_per_task": 1,
        "response_tokens": 2,
        "epochs": 1,
        "gradient_accumulation": 1,
        "warmup_steps": 0,
        "num_tokens": 2,
        "validation_samples_per_task": 0,
        "store_prompt_kv": True,
    }
    return TrainingConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A finished training run on the tiny model, and its tokenizer."""
    from lookahead_cache.training import train

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp_path_factory.mktemp("train")
    train(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tokenizer, tiny_training_config(), out)
    return out, tokenizer


@pytest.fixture
def train_again(trained, tiny_model_dir, tmp_path):
    """`train_again(model_dir=..., **config)` reruns training on a copy of the finished run."""
    from lookahead_cache.training import train

    finished, tokenizer = trained
    out = tmp_path / "train"
    shutil.copytree(finished, out)

    def rerun(model_dir=tiny_model_dir, **config):
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        return train(model, tokenizer, tiny_training_config(**config), out)

    return out, rerun


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 2}, "holds a run with epochs 1; this call has epochs 2: "),
        (
            {"lengths": [512], "seed": 7},
            "holds a run with lengths [384], seed 1000; this call has lengths [512], seed 7",
        ),
    ],
    ids=["epochs", "lengths-and-seed"],
)
def test_train_refuses_to_resume_with_another_config_naming_what_differs(train_again, changes, message):
    out, rerun = train_again
    before = files(out)
    with pytest.raises(ValueError, match=re.escape(message)):
        rerun(**changes)
    assert files(out) == before


def test_train_refuses_to_resume_with_another_model(train_again, tmp_path):
    out, rerun = train_again
    other = other_weights(json.loads((out / "base_model.json").read_text())["model"], tmp_path / "retrained")
    with pytest.raises(ValueError, match=r"holds a run with model \S+, model_sha256 [0-9a-f]{16}; this call has"):
        rerun(model_dir=other)


@pytest.mark.parametrize("folder", ["targets", "prompt_kv"])
def test_train_names_a_damaged_cached_file_and_the_fix(train_again, folder):
    out, rerun = train_again
    (damaged,) = (out / folder).glob("*.safetensors")
    damaged.write_bytes(damaged.read_bytes()[:-64])
    with pytest.raises(ValueError, match=re.escape(f"{damaged} is damaged") + ".*delete it and rerun the same command"):
        rerun()


@pytest.mark.parametrize("name", ["training_config.json", "base_model.json"])
def test_train_names_a_damaged_settings_file(train_again, name):
    out, rerun = train_again
    with pytest.raises(ValueError, match=damage_json(out / name)):
        rerun()


def test_train_resume_drops_a_torn_loss_row_and_writes_complete_rows(train_again, logged):
    out, rerun = train_again
    log = out / "loss.jsonl"
    (step,) = log.read_text().splitlines()
    log.write_text(step + "\n" + step[:10])
    rerun()
    assert "loss.jsonl:2: the last line was cut short" in logged.text
    assert log.read_text() == step + "\n"


# ----- profile --------------------------------------------------------------------------------------------------

PROFILE_SETTINGS = {"context_length": 400, "questions": 1, "answer_tokens": 2, "sink": 2, "window": 4}


def profile_into(out, model_dir, **settings):
    from lookahead_cache.profiling.profiler import profile_model

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return profile_model(model, tokenizer, ["snapkv"], out, **{**PROFILE_SETTINGS, **settings})


@pytest.fixture(scope="module")
def finished_profile(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("profile")
    profile_into(out, tiny_model_dir)
    return out


@pytest.fixture
def profiled(finished_profile, tiny_model_dir, tmp_path):
    """A copy of a finished snapkv profile of the tiny model, and `profile(model_dir=..., **settings)` to rerun it."""
    out = tmp_path / "profile"
    shutil.copytree(finished_profile, out)
    return out, lambda model_dir=tiny_model_dir, **settings: profile_into(out, model_dir, **settings)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"window": 8}, "holds a profiling run with window 4; this call has window 8: "),
        ({"answer_tokens": 3}, "holds a profiling run with answer_tokens 2; this call has answer_tokens 3: "),
    ],
    ids=["window", "answer-tokens"],
)
def test_profile_refuses_to_resume_with_other_settings_naming_them(profiled, changes, message):
    out, profile = profiled
    before = files(out)
    with pytest.raises(ValueError, match=re.escape(message)):
        profile(**changes)
    assert files(out) == before


def test_profile_refuses_to_resume_with_another_model(profiled, tiny_model_dir, tmp_path):
    _, profile = profiled
    with pytest.raises(ValueError, match=r"holds a profiling run with model \S+, model_sha256 [0-9a-f]{16}; this call"):
        profile(model_dir=other_weights(tiny_model_dir, tmp_path / "retrained"))


def test_profile_names_a_damaged_settings_file(profiled):
    out, profile = profiled
    with pytest.raises(ValueError, match=damage_json(out / "calibration" / "settings.json")):
        profile()


def test_profile_names_a_damaged_calibration_table_and_the_fix(profiled):
    out, profile = profiled
    table = out / "calibration" / "prompt_00.safetensors"
    table.write_bytes(b"\0" * 16)
    with pytest.raises(ValueError, match=re.escape(f"{table} is damaged") + ".*delete it and rerun the same command"):
        profile()
    table.unlink()
    profile()


def test_a_model_fingerprint_sees_other_weights_and_not_a_lookahead_adapter(tiny_model_dir):
    from lookahead_cache.adapters import LookaheadConfig, add_lookahead

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    fingerprint = model_fingerprint(model)
    with_adapter = add_lookahead(model, LookaheadConfig(num_tokens=2))
    assert model_fingerprint(with_adapter) == fingerprint
    with torch.no_grad():
        model.lm_head.weight[0, 0] += 1
    assert model_fingerprint(with_adapter) != fingerprint
    assert model_fingerprint(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)) != fingerprint
