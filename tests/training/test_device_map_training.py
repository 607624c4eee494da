"""Training a frozen model placed by `device_map`, and `--device-map` / `--dtype` on train, profile and eval.

On this CPU-only machine a placement over several devices cannot be made: a model whose every layer accelerate's
hooks run on the CPU stands in for it (the hooks move each layer's inputs as they would between GPUs), and layers
offloaded to disk, which training refuses, are real. The GPU test (skipped without CUDA; scripts/gpu_check.sh runs it)
splits the model over the GPU and the CPU.
"""

import argparse
import json
import os
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import dispatch_model
from accelerate.utils import DistributedType
from conftest import save_tiny_llama, tiny_model
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from lookahead_cache.cli import main
from lookahead_cache.commands.eval import DEFAULT_MODEL, device_map_value
from lookahead_cache.model_loading import load_model
from lookahead_cache.training.config import TrainingConfig
from lookahead_cache.training.trainer import check_placement, train

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE = REPO_ROOT / "docs" / "bring-your-own-model.md"
ADAPTER_FILES = ("adapter_model.safetensors", "lookahead_embeddings.safetensors")


def layer_map(model, where) -> dict[str, str | int]:
    """A device_map placing each top-level module of a Llama; `where(name)` gives its device."""
    names = ["model.embed_tokens", "model.rotary_emb"]
    names += [f"model.layers.{index}" for index in range(model.config.num_hidden_layers)]
    return {name: where(name) for name in [*names, "model.norm", "lm_head"]}


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with a chat template, made here: the placement tests need neither the embedded model's
    GGUF file nor a download (the GPU machine has neither)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={char: index for index, char in enumerate(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<|im_start|>", eos_token="<|im_end|>")
    wrapped.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    return wrapped


@pytest.fixture(scope="module")
def byte_model_dir(tmp_path_factory):
    """A random-weight 2-layer Llama with `byte_tokenizer`, saved like any local checkpoint."""
    return save_tiny_llama(tmp_path_factory.mktemp("byte-llama"), byte_tokenizer(), context_length=2048)


def small_config(**changes) -> TrainingConfig:
    # 768 characters: a byte tokenizer's prompt of about 650 tokens.
    settings = dict(
        tasks=["niah_single_noise"],
        lengths=[768],
        samples_per_task=[4],
        response_tokens=4,
        epochs=1,
        num_tokens=4,
        gradient_accumulation=1,
        warmup_steps=1,
        validation_samples_per_task=[0],
        save_every=2,
    )
    return TrainingConfig(**{**settings, **changes})


def load(model_dir, **placement):
    return AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa", **placement).eval()


def logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines()]


def assert_same_adapters(expected_run: Path, actual_run: Path, **tolerance) -> None:
    for name in ADAPTER_FILES:
        expected, actual = (load_file(str(run / "adapter" / name)) for run in (expected_run, actual_run))
        assert expected.keys() == actual.keys()
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], **tolerance, msg=key)


def test_a_model_placed_by_hooks_trains_where_it_is_like_the_model_in_place(byte_model_dir, tmp_path, monkeypatch):
    tokenizer = AutoTokenizer.from_pretrained(byte_model_dir)
    train(load(byte_model_dir), tokenizer, small_config(), tmp_path / "in_place")

    placed = load(byte_model_dir)
    device_map = layer_map(placed, lambda name: "cpu")
    # force_hooks: accelerate's hooks run each layer and move its inputs, as they do between devices.
    placed = dispatch_model(placed, device_map=device_map, force_hooks=True)
    assert placed.hf_device_map == device_map and hasattr(placed.model.layers[1], "_hf_hook")
    moves = []
    monkeypatch.setattr(placed, "to", lambda *args, **kwargs: moves.append(args))
    train(placed, tokenizer, small_config(), tmp_path / "placed")

    assert moves == [], "the trainer moved a model placed by its device_map"
    assert placed.hf_device_map == device_map and hasattr(placed.model.layers[1], "_hf_hook")
    whole, hooked = logged(tmp_path / "in_place"), logged(tmp_path / "placed")
    assert [row["step"] for row in hooked] == [1, 2, 3, 4]
    if torch.cuda.is_available():  # the model in place trained on the GPU (scripts/gpu_check.sh)
        for expected, actual in zip(whole, hooked):
            assert actual["loss"] == pytest.approx(expected["loss"], rel=1e-3)
        assert_same_adapters(tmp_path / "in_place", tmp_path / "placed", rtol=1e-3, atol=1e-5)
    else:
        # The same computation, the hooks moving tensors from the CPU to the CPU: exact.
        assert hooked == whole
        assert_same_adapters(tmp_path / "in_place", tmp_path / "placed", rtol=0, atol=0)


def test_layers_offloaded_to_disk_are_refused_before_the_run_folder_is_written(byte_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(byte_model_dir)
    model = load(byte_model_dir)
    device_map = layer_map(model, lambda name: "disk" if name == "model.layers.1" else "cpu")
    offloaded = load(byte_model_dir, device_map=device_map, offload_folder=str(tmp_path / "offload"))
    with pytest.raises(ValueError, match=r"offloads layers of the model \(model.layers.1: disk\).*backward") as error:
        train(offloaded, tokenizer, small_config(), tmp_path / "run")
    assert "no 'disk'" in str(error.value)
    assert not (tmp_path / "run").exists()


def test_without_the_refusal_the_backward_through_a_disk_offloaded_layer_fails(byte_model_dir, tmp_path, monkeypatch):
    # What the refusal spares a user: the error the first training step would end on.
    from lookahead_cache.training import trainer

    model = load(byte_model_dir)
    device_map = layer_map(model, lambda name: "disk" if name == "model.layers.0" else "cpu")
    offloaded = load(byte_model_dir, device_map=device_map, offload_folder=str(tmp_path / "offload"))
    monkeypatch.setattr(trainer, "check_placement", lambda model, accelerator: True)
    monkeypatch.setattr(trainer, "model_fingerprint", lambda model: "offloaded")
    monkeypatch.setattr("lookahead_cache.training.data.model_fingerprint", lambda model: "offloaded")
    tokenizer = AutoTokenizer.from_pretrained(byte_model_dir)
    with pytest.raises(RuntimeError, match="expected device meta"):
        train(offloaded, tokenizer, small_config(), tmp_path / "run")


@pytest.mark.parametrize(
    ("processes", "kind", "message"),
    [
        (2, DistributedType.MULTI_CPU, "placed by a device_map .* and 2 processes run.*in one process"),
        (2, DistributedType.FSDP, "does not run under FSDP.*--device-map auto"),
    ],
)
def test_a_placed_model_is_refused_under_several_processes_and_fsdp_always(processes, kind, message):
    model = tiny_model()
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers": 1}
    with pytest.raises(ValueError, match=message):
        check_placement(model, SimpleNamespace(num_processes=processes, distributed_type=kind))


def test_device_map_values_and_their_refusals(tmp_path, byte_model_dir):
    assert device_map_value("auto") == "auto" and device_map_value("cuda:1") == "cuda:1" and device_map_value("0") == 0
    placement = {"model.embed_tokens": 0, "model.layers.0": "cpu", "lm_head": "disk"}
    (tmp_path / "map.json").write_text(json.dumps(placement))
    assert device_map_value(str(tmp_path / "map.json")) == placement
    (tmp_path / "bad.json").write_text(json.dumps({"model.layers.0": "gpu"}))
    for text, message in [
        ("atuo", "neither a placement strategy"),
        (str(tmp_path / "bad.json"), "is not a device map"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            device_map_value(text)
    with pytest.raises(ValueError, match=r"embedded 'default' model .* pass --device-map cpu or cuda:0"):
        load_model(DEFAULT_MODEL, device_map="auto")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="names CUDA device 0, but torch sees no CUDA device.*--device-map cpu"):
            load_model(str(byte_model_dir), device_map="cuda:0")
    model, _ = load_model(str(byte_model_dir), "bfloat16", device_map="cpu")
    assert model.hf_device_map == {"": "cpu"} and model.dtype == torch.bfloat16


@pytest.mark.parametrize("command", ["train", "profile", "eval"])
def test_the_commands_take_device_map_and_dtype_and_refuse_a_bad_placement(command, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_status:
        main([command, "--dtype", "bfloat16", "--device-map", "gpu0", "--out", str(tmp_path)])
    assert exit_status.value.code == 2
    assert "argument --device-map: 'gpu0' is neither a placement strategy" in capsys.readouterr().err


def recipe_commands() -> list[str]:
    """The commands of the recipe's subsection "A model larger than one device" (its `shell` block)."""
    text = RECIPE.read_text()
    section = text[text.index("### A model larger than one device") :]
    block = re.search(r"^```shell\n(.*?)^```", section, flags=re.S | re.M).group(1)
    lines = block.replace("\\\n", " ").splitlines()
    return [line for line in lines if shlex.split(line, comments=True)]


# The sizes shrunk as tests/project/test_bring_your_own_model.py shrinks the recipe's (flags after the doc's win).
SHRUNK = {
    "train": ["--response-tokens", "3", "--epochs", "1", "--num-tokens", "4", "--warmup-steps", "0"]
    + ["--validation-fraction", "0.25"],
    "profile": ["--questions", "2", "--answer-tokens", "3"],
    "eval": ["--tasks", "niah_single_noise", "--lengths", "512", "--samples", "1", "--budgets", "64"],
}


def write_prompts(path: Path) -> Path:
    """Eight prompts of a few hundred tokens, records to look up."""
    rows = []
    for index in range(8):
        records = " ".join(f"Item {item} of batch {index} weighs {(item * 7 + index) % 50} kg." for item in range(30))
        rows.append({"prompt": f"{records}\n\nWhat does item {index + 3} weigh?"})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.mark.slow
def test_the_recipes_device_map_commands_run_on_a_tiny_model(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    monkeypatch.setenv("MODEL", str(tiny_model_dir))
    monkeypatch.setenv("RUN", str(run))
    monkeypatch.setenv("DATA", str(write_prompts(tmp_path / "prompts.jsonl")))
    commands = recipe_commands()
    assert [shlex.split(command)[1] for command in commands] == ["train", "profile", "eval"]
    for command in commands:
        argv = [os.path.expandvars(arg) for arg in shlex.split(command, comments=True)]
        assert argv[0] == "lookahead-cache" and argv[argv.index("--device-map") + 1] == "auto"
        # On this machine `auto` places everything on the CPU.
        assert main([*argv[1:], *SHRUNK[argv[1]]]) == 0
    assert (run / "best_adapter" / "lookahead_embeddings.safetensors").is_file()
    assert (run / "best_adapter" / "lukv_profile_lookahead.json").is_file()
    assert (run / "eval" / "predictions.jsonl").stat().st_size > 0
    assert json.loads((run / "eval" / "settings.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (scripts/gpu_check.sh runs it)")
def test_a_model_split_over_the_gpu_and_the_cpu_trains_there_like_the_model_in_place(byte_model_dir, tmp_path):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    tokenizer = AutoTokenizer.from_pretrained(byte_model_dir)
    train(load(byte_model_dir), tokenizer, small_config(), tmp_path / "in_place")  # on the GPU (accelerate's device)

    placed = load(byte_model_dir)
    device_map = layer_map(placed, lambda name: 0 if name in ("model.embed_tokens", "model.layers.0") else "cpu")
    # main_device="cpu": the CPU layers run on the CPU, not offloaded to the GPU (what from_pretrained would do).
    placed = dispatch_model(placed, device_map=device_map, main_device="cpu")
    train(placed, tokenizer, small_config(), tmp_path / "placed")
    assert placed.model.layers[0].self_attn.q_proj.base_layer.weight.device.type == "cuda"
    assert placed.model.layers[1].self_attn.q_proj.base_layer.weight.device.type == "cpu"
    whole, split = logged(tmp_path / "in_place"), logged(tmp_path / "placed")
    assert [row["step"] for row in split] == [row["step"] for row in whole]
    for expected, actual in zip(whole, split):
        assert actual["loss"] == pytest.approx(expected["loss"], rel=1e-3)
    assert_same_adapters(tmp_path / "in_place", tmp_path / "placed", rtol=1e-3, atol=1e-5)

    # from_pretrained beside a GPU offloads the layers mapped to the CPU: refused.
    offloaded = load(byte_model_dir, device_map=device_map)
    with pytest.raises(ValueError, match="offloads layers of the model"):
        train(offloaded, tokenizer, small_config(), tmp_path / "offloaded")
