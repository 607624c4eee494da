"""`train --data` and `profile --data`: the user's JSONL prompts, read, refused or skipped, trained on and resumed."""

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import interrupt_training
from safetensors.torch import load_file
from transformers import AutoTokenizer
from transformers.testing_utils import CaptureLogger
from transformers.utils import logging

from lookahead_cache.cli import main
from lookahead_cache.training.user_data import file_digest, read_user_data

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPTS = [
    {"prompt": "The red door's code is 4412. The blue door's code is 9031. What is the red door's code?"},
    {"messages": [{"role": "user", "content": "List three prime numbers and say which is largest."}]},
    {
        "messages": [
            {"role": "system", "content": "You answer briefly."},
            {"role": "user", "content": "Name the capital of France."},
        ],
        "response": "Paris is the capital of France.",
    },
    {"prompt": "Summarise: the cat sat on the mat, then it slept in the sun all afternoon."},
]


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_prompts_and_chats_are_read_with_stable_keys_and_a_deterministic_split(tokenizer, tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", [PROMPTS[0], "", PROMPTS[1], PROMPTS[2]])
    data = read_user_data([path], tokenizer, context_length=4096, response_tokens=4)
    assert [prompt.key.rsplit("@", 1)[0] for prompt in data.prompts] == [
        "data/mine.jsonl/1",
        "data/mine.jsonl/3",
        "data/mine.jsonl/4",
    ]
    plain, chat, answered = data.prompts
    assert plain.input_ids == tokenizer.encode(PROMPTS[0]["prompt"])
    rendered = tokenizer.apply_chat_template(PROMPTS[1]["messages"], add_generation_prompt=True, tokenize=False)
    assert chat.input_ids == tokenizer.encode(rendered, add_special_tokens=False)
    assert plain.response_ids is None and chat.response_ids is None
    assert answered.response_ids == tokenizer.encode(PROMPTS[2]["response"], add_special_tokens=False)[:4]
    # The same lines elsewhere and in another file order keep their keys; the split depends on the keys alone.
    moved = write_jsonl(tmp_path / "elsewhere.jsonl", [PROMPTS[2], PROMPTS[1]])
    again = read_user_data([moved], tokenizer, context_length=4096, response_tokens=4)
    assert again.prompts[1].key.rsplit("@", 1)[1] == chat.key.rsplit("@", 1)[1]
    training, validation = data.split(0.34)
    assert len(validation) == 1 and len(training) == 2
    assert data.split(0.34) == (training, validation)
    assert data.split(0.0) == (data.prompts, [])
    with pytest.raises(ValueError, match="holds out all 3 prompts of the data files, leaving none to train on"):
        data.split(0.9)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"prompt": "unterminated', "is not valid JSON .*write one JSON object per line"),
        ('["a list"]', "is a JSON list, not an object"),
        ('{"prompt": "hi", "answer": "x"}', r"has unknown keys \['answer'\].*rename or remove them"),
        ('{"prompt": "hi", "messages": []}', 'must hold exactly one of "prompt"'),
        ('{"messages": [{"role": "narrator", "content": "hi"}]}', "unknown role 'narrator': use one of system"),
        ('{"messages": [{"role": "user", "text": "hi"}]}', 'exactly the keys "role" and "content"'),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}',
            'the last message is the assistant\'s: move its content to "response"',
        ),
        ('{"prompt": "hi", "response": ""}', '"response" that is not a non-empty string'),
    ],
)
def test_lines_that_can_only_be_mistakes_stop_the_run_naming_file_line_and_fix(tokenizer, tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(PROMPTS[0]) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl, line 2.*{message}"):
        read_user_data([path], tokenizer, context_length=4096, response_tokens=4)


def test_empty_and_too_long_prompts_are_skipped_logged_and_counted(tokenizer, tmp_path):
    long_prompt = {"prompt": "word " * 80}
    path = write_jsonl(tmp_path / "mixed.jsonl", [PROMPTS[0], {"prompt": "  "}, long_prompt, PROMPTS[3]])
    logger = logging.get_logger("lookahead_cache.training.user_data")
    with CaptureLogger(logger) as logged:
        data = read_user_data([path], tokenizer, context_length=64, response_tokens=4)
    assert len(data.prompts) == 2
    assert "Skipping " + str(path) + ", line 2: its prompt is empty." in logged.out
    assert f"line 3: its {len(tokenizer.encode(long_prompt['prompt']))} prompt tokens and 4 response" in logged.out
    assert data.skipped_summary() == (
        "Skipped 2 lines of the data files (1 empty prompts, 1 prompts longer than the model's context); each is "
        "logged above."
    )
    with pytest.raises(ValueError, match="hold no usable prompt"):
        read_user_data([write_jsonl(tmp_path / "empty.jsonl", [{"prompt": ""}])], tokenizer, 64, 4)
    with pytest.raises(ValueError, match="is passed twice"):
        read_user_data([path, path], tokenizer, 4096, 4)


def train_argv(model, data, out, *extra):
    argv = ["train", "--model", str(model), "--data", *map(str, data), "--out", str(out)]
    argv += ["--response-tokens", "3", "--epochs", "2", "--grad-accum", "1", "--warmup-steps", "0"]
    return argv + ["--save-every", "1", "--num-tokens", "2", *extra]


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_on_your_data_alone_validates_on_held_out_lines_and_resumes(
    tiny_model_dir, tmp_path, monkeypatch, capsys
):
    data = write_jsonl(tmp_path / "mine.jsonl", [*PROMPTS, {"prompt": ""}])
    argv = train_argv(tiny_model_dir, [data], tmp_path / "run", "--validation-fraction", "0.25")
    resume = interrupt_training(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    resume()
    logger = logging.get_logger("lookahead_cache")
    with CaptureLogger(logger) as logged:
        assert main(argv) == 0
    assert "Resuming from step" in logged.out
    assert logged.out.rstrip().endswith("Skipped 1 lines of the data files (1 empty prompts); each is logged above.")
    # Three training prompts (one held out of four), two epochs; no built-in form joined them.
    losses = rows_of(tmp_path / "run" / "loss.jsonl")
    assert [row["step"] for row in losses] == [1, 2, 3, 4, 5, 6] and all("validation_loss" in row for row in losses)
    responses = {row["key"] for row in rows_of(tmp_path / "run" / "responses.jsonl")}
    assert all(key.startswith("data/mine.jsonl/") for key in responses)
    # The line with a response is trained on that response: the model made none for it.
    assert not any(key.startswith("data/mine.jsonl/3@") for key in responses) and len(responses) == 3
    recipe = json.loads((tmp_path / "run" / "adapter" / "lookahead_config.json").read_text())["training"]
    assert "3 prompts: the prompts of mine.jsonl less a 25% validation share" in recipe["data"]
    assert recipe["validation_loss"].endswith("on 1 prompts held out of the data files")
    assert "Adapter:" in capsys.readouterr().out

    # Another file's content under the same name is refused on resume.
    write_jsonl(data, PROMPTS[:2])
    with pytest.raises(ValueError, match="data_files_sha256"):
        main(argv)


def test_data_mixes_with_named_forms(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", PROMPTS[:2])
    argv = train_argv(tiny_model_dir, [data], tmp_path / "run", "--tasks", "niah_single_noise", "--lengths", "256")
    argv += ["--samples-per-task", "1", "--validation-samples-per-task", "0", "--responses-only"]
    assert main(argv) == 0
    keys = [row["key"] for row in rows_of(tmp_path / "run" / "responses.jsonl")]
    assert sorted(key.split("/")[0] for key in keys) == ["data", "data", "niah_single_noise"]


def test_train_loads_a_hub_model_in_bfloat16(tiny_model_dir, local_hub, tmp_path):
    # Pinned to the commit: olah answers a file missing at a branch (an optional tokenizer file) as a missing repo.
    commit = local_hub.publish("someone/tiny-llama-for-data", tiny_model_dir)
    data = write_jsonl(tmp_path / "mine.jsonl", PROMPTS[:2])
    argv = train_argv("someone/tiny-llama-for-data", [data], tmp_path / "run", "--validation-fraction", "0")
    argv += ["--revision", commit, "--dtype", "bfloat16", "--epochs", "1", "--store-prompt-kv"]
    assert main(argv) == 0
    stored = load_file(str(next((tmp_path / "run" / "prompt_kv").glob("data_mine.jsonl_1_*.safetensors"))))
    assert stored["keys.0"].dtype == torch.bfloat16
    # The trained embeddings stay float32, like PEFT's LoRA weights on a half-precision model.
    trained = load_file(str(tmp_path / "run" / "adapter" / "lookahead_embeddings.safetensors"))
    assert trained["embeddings"].dtype == torch.float32
    # Rerun, the finished run resumes from its checkpoint's float32 embeddings, not from their bfloat16 rounding.
    assert main(argv) == 0
    again = load_file(str(tmp_path / "run" / "adapter" / "lookahead_embeddings.safetensors"))
    assert torch.equal(again["embeddings"], trained["embeddings"])
    base_model = json.loads((tmp_path / "run" / "base_model.json").read_text())
    assert base_model["model"] == "someone/tiny-llama-for-data"
    assert len(rows_of(tmp_path / "run" / "loss.jsonl")) == 2
    with pytest.raises(ValueError, match="neither 'default', a local model folder nor a Hub model id that loads"):
        main(train_argv("someone/not-published", [data], tmp_path / "other"))


def test_profile_reads_your_prompts_instead_of_the_calibration_document(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "mine.jsonl", PROMPTS)
    argv = ["profile", "--model", str(tiny_model_dir), "--data", str(data), "--questions", "3", "--dtype", "bfloat16"]
    assert main([*argv, "--answer-tokens", "4", "--sink", "1", "--window", "2", "--out", str(tmp_path / "out")]) == 0
    metadata = json.loads((tmp_path / "out" / "lukv_profile_snapkv.json").read_text())
    assert metadata["calibration"]["prompts"] == 3
    assert metadata["calibration"]["source"].startswith("data files: mine.jsonl (sha256 ")
    with pytest.raises(ValueError, match="--questions 5 asks for more prompts than the 4 the data files give"):
        main([*argv, "--questions", "5", "--out", str(tmp_path / "other")])


@pytest.mark.slow
def test_the_documented_command_trains_on_the_example_data_as_written(tmp_path, monkeypatch):
    pytest.importorskip("gguf")
    docs = (REPO_ROOT / "docs" / "training.md").read_text().split("## Train on your data", 1)[1]
    command = re.findall(r"^```bash\n(.*?)^```", docs, flags=re.S | re.M)[0].strip()
    assert command.startswith("lookahead-cache train --data examples/my_prompts.jsonl")
    # Run where its relative paths mean what they do in a clone, its run folder kept out of the clone.
    shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)[1:]) == 0
    recipe = json.loads((tmp_path / "runs" / "my-data" / "adapter" / "lookahead_config.json").read_text())["training"]
    assert recipe["data"].startswith("7 prompts: the prompts of my_prompts.jsonl")


def test_a_model_with_pickled_weights_only_is_refused(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from lookahead_cache.model_loading import load_model

    pickled = tmp_path / "pickled"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.save_pretrained(pickled)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(pickled)
    # transformers writes safetensors only: the pickled checkpoint of an older or foreign repo is made by hand.
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="safetensors weights"):
        load_model(str(pickled))


def saved_dataset(path, rows_file, splits=None):
    """`rows_file` (JSONL) as a folder written by `datasets`' save_to_disk: a Dataset, or a DatasetDict of `splits`."""
    datasets = pytest.importorskip("datasets")
    dataset = datasets.Dataset.from_json(str(rows_file))
    if splits:
        dataset = datasets.DatasetDict({split: dataset for split in splits})
    dataset.save_to_disk(str(path))
    return path


def test_a_datasets_folder_and_a_folder_of_jsonl_give_the_prompts_of_the_jsonl(tokenizer, tmp_path):
    (tmp_path / "files").mkdir()
    jsonl = write_jsonl(tmp_path / "files" / "mine.jsonl", PROMPTS)
    expected = read_user_data([jsonl], tokenizer, context_length=4096, response_tokens=4).prompts
    # A folder of .jsonl files reads as its files, with the same keys.
    folder = read_user_data([tmp_path / "files"], tokenizer, context_length=4096, response_tokens=4).prompts
    assert folder == expected
    # A saved Dataset whose rows mix "prompt" and "messages" (Arrow gives every row both, None where a line left one
    # out) gives the same prompts and responses; keys name the folder and the row.
    dataset = saved_dataset(tmp_path / "mine-ds", jsonl)
    rows = read_user_data([str(dataset)], tokenizer, context_length=4096, response_tokens=4).prompts
    assert [(row.input_ids, row.response_ids) for row in rows] == [(p.input_ids, p.response_ids) for p in expected]
    assert [row.key.rsplit("@", 1)[0] for row in rows] == [f"data/mine-ds/{index}" for index in range(4)]
    # A DatasetDict's split, named after a colon, reads the same rows under keys that name the split.
    splits = saved_dataset(tmp_path / "mine-dd", jsonl, splits=["train", "test"])
    in_split = read_user_data([f"{splits}:test"], tokenizer, context_length=4096, response_tokens=4).prompts
    assert [row.input_ids for row in in_split] == [row.input_ids for row in rows]
    assert in_split[0].key.startswith("data/mine-dd:test/0@")
    assert in_split[0].key.rsplit("@", 1)[1] == rows[0].key.rsplit("@", 1)[1]


def test_a_datasets_folder_has_a_content_digest_that_a_changed_folder_changes(tokenizer, tmp_path):
    jsonl = write_jsonl(tmp_path / "mine.jsonl", PROMPTS)
    first = saved_dataset(tmp_path / "first", jsonl)
    again = saved_dataset(tmp_path / "again", jsonl)
    splits = saved_dataset(tmp_path / "splits", jsonl, splits=["train"])
    assert file_digest(first) == file_digest(again) == file_digest(f"{splits}:train")
    changed = saved_dataset(tmp_path / "changed", write_jsonl(tmp_path / "changed.jsonl", PROMPTS[:3]))
    assert file_digest(changed) != file_digest(first)
    (tmp_path / "files").mkdir()
    shutil.copy(jsonl, tmp_path / "files" / "mine.jsonl")
    before = file_digest(tmp_path / "files")
    write_jsonl(tmp_path / "files" / "more.jsonl", PROMPTS[:1])
    assert file_digest(tmp_path / "files") != before


def test_a_datasets_folder_that_cannot_be_read_as_prompts_is_refused_with_the_fix(tokenizer, tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    jsonl = write_jsonl(tmp_path / "mine.jsonl", PROMPTS)
    splits = saved_dataset(tmp_path / "dd", jsonl, splits=["train", "test"])
    no_split = rf"DatasetDict folder \(splits: train, test\) and names no split.*--data {splits}:train"
    with pytest.raises(ValueError, match=no_split):
        read_user_data([splits], tokenizer, 4096, 4)
    with pytest.raises(ValueError, match="names the split 'dev', which it lacks"):
        read_user_data([f"{splits}:dev"], tokenizer, 4096, 4)
    single = saved_dataset(tmp_path / "single", jsonl)
    with pytest.raises(ValueError, match="is not a DatasetDict folder.*without ':train'"):
        read_user_data([f"{single}:train"], tokenizer, 4096, 4)
    datasets.Dataset.from_list([{"text": "hi", "label": 1}]).save_to_disk(str(tmp_path / "texts"))
    with pytest.raises(ValueError, match=r"columns \['label', 'text'\].*rename_column\(\"text\", \"prompt\"\)"):
        read_user_data([tmp_path / "texts"], tokenizer, 4096, 4)
    with pytest.raises(ValueError, match=r"dd \(split 'train'\), row 1: message 0 has the unknown role 'narrator'"):
        bad = datasets.Dataset.from_list(
            [{"messages": [{"role": "user", "content": "hi"}]}, {"messages": [{"role": "narrator", "content": "x"}]}]
        )
        datasets.DatasetDict(train=bad).save_to_disk(str(tmp_path / "bad" / "dd"))
        read_user_data([f"{tmp_path / 'bad' / 'dd'}:train"], tokenizer, 4096, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no .jsonl file and is not a folder saved by datasets"):
        read_user_data([tmp_path / "empty"], tokenizer, 4096, 4)
    with pytest.raises(ValueError, match="is passed twice"):
        read_user_data([tmp_path / "mine.jsonl", tmp_path], tokenizer, 4096, 4)
    # Without the optional `datasets` package, the install command is named.
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ValueError, match=r"saved by the `datasets` library.*pip install 'lookahead-cache\[train\]'"):
        read_user_data([single], tokenizer, 4096, 4)


def test_train_reads_a_datasetdict_split_and_refuses_a_changed_one_on_resume(tiny_model_dir, tmp_path):
    jsonl = write_jsonl(tmp_path / "mine.jsonl", PROMPTS)
    splits = saved_dataset(tmp_path / "dd", jsonl, splits=["train"])
    argv = train_argv(tiny_model_dir, [f"{splits}:train"], tmp_path / "run", "--responses-only")
    assert main(argv) == 0
    keys = [row["key"] for row in rows_of(tmp_path / "run" / "responses.jsonl")]
    assert keys and all(key.startswith("data/dd:train/") for key in keys)
    recorded = json.loads((tmp_path / "run" / "data_files.json").read_text())["data_files_sha256"]
    assert recorded == {f"{splits}:train": file_digest(f"{splits}:train")}
    shutil.rmtree(splits)
    saved_dataset(splits, write_jsonl(tmp_path / "fewer.jsonl", PROMPTS[:3]), splits=["train"])
    with pytest.raises(ValueError, match="data_files_sha256"):
        main(argv)
