"""load_lookahead on bad input: each refusal names the file, the problem and the fix, and leaves the model passed in
exactly as it was (module tree, weights, hooks, attributes), whether the adapter is refused by our checks before PEFT
wraps the model or PEFT (or anything after it) fails half-way."""

import json
import re
import shutil
from pathlib import Path

import peft.peft_model
import pytest
import torch
from conftest import COMMON, prompt_ids, tiny_model
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled
from peft import PeftModel
from peft.tuners.lora import LoraModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from lookahead_cache import LookaheadCache
from lookahead_cache.adapters import (
    LookaheadConfig,
    add_lookahead,
    get_lookahead,
    injection,
    load_lookahead,
    serialization,
)
from lookahead_cache.adapters.config import BaseModelSignature
from lookahead_cache.prefill import CACHE_ARGUMENT

NUM_TOKENS = 8


def model_of(**sizes):
    """A random Llama of the conftest sizes but `sizes`."""
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(LlamaConfig(**{**COMMON, **sizes}), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Saved adapters: for the conftest Llama (LoRA rank 8, and rank 4), and for Llamas of other sizes."""
    root = tmp_path_factory.mktemp("adapters")
    made = {
        "rank8": (tiny_model(), 8),
        "rank4": (tiny_model(), 4),
        "hidden32": (model_of(hidden_size=32, intermediate_size=64), 8),
        "layers4": (model_of(num_hidden_layers=4), 8),
        "layers2": (model_of(num_hidden_layers=2), 8),
    }
    for name, (model, rank) in made.items():
        peft_model = add_lookahead(model, LookaheadConfig(num_tokens=NUM_TOKENS, lora_rank=rank))
        with torch.no_grad():
            for parameter_name, parameter in peft_model.named_parameters():
                if "lora_B" in parameter_name:
                    parameter.normal_(0.0, 0.5)
        get_lookahead(peft_model).save_pretrained(root / name)
    return root


@pytest.fixture
def adapter(adapters, tmp_path):
    """A copy of the rank-8 adapter of the conftest Llama, to break."""
    return Path(shutil.copytree(adapters / "rank8", tmp_path / "adapter"))


def base_model():
    """The conftest Llama, with a hook of the user's own that must survive a failed load."""
    model = tiny_model()
    model.model.layers[0].register_forward_hook(lambda module, args, output: None)
    return model


def snapshot(model):
    modules = list(model.named_modules())
    return {
        "tree": [(name, type(module)) for name, module in modules],
        "objects": [module for _, module in modules],
        "attributes": {name: sorted(vars(module)) for name, module in modules},
        "hooks": {
            name: {key: dict(value) for key, value in vars(module).items() if "hooks" in key}
            for name, module in modules
        },
        "requires_grad": {name: parameter.requires_grad for name, parameter in model.named_parameters()},
        "training": {name: module.training for name, module in modules},
        "state": {key: value.clone() for key, value in model.state_dict().items()},
    }


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after["state"].keys() == before["state"].keys()
    assert all(torch.equal(after["state"][key], value) for key, value in before["state"].items())
    for key in ("tree", "attributes", "hooks", "requires_grad", "training"):
        assert after[key] == before[key], key
    assert all(a is b for a, b in zip(after["objects"], before["objects"], strict=True))
    assert get_lookahead(model) is None


def refused(model, repo_or_dir, error, match):
    """Load, expecting `error` matching `match`; the model must come back unchanged."""
    before = snapshot(model)
    with pytest.raises(error, match=match) as caught:
        load_lookahead(model, repo_or_dir)
    assert_unchanged(model, before)
    return str(caught.value)


def truncate(file, keep):
    """Cut `file` of the adapter to `keep(its size)` bytes, as an interrupted copy or download does."""

    def cut(adapters, folder):
        data = (folder / file).read_bytes()
        (folder / file).write_bytes(data[: keep(len(data))])

    return cut


def take(name, *files):
    """Replace `files` of the adapter by those of the saved adapter `name`."""

    def replace(adapters, folder):
        for file in files:
            shutil.copy(adapters / name / file, folder / file)

    return replace


def claim_the_signature_of_the_conftest_llama(folder):
    config = json.loads((folder / "lookahead_config.json").read_text())
    config["base_model"] = vars(BaseModelSignature.of(tiny_model().config))
    (folder / "lookahead_config.json").write_text(json.dumps(config))


def copy_of(name, *edits):
    """The saved adapter `name` instead, with `edits`."""

    def make(adapters, folder):
        shutil.rmtree(folder)
        shutil.copytree(adapters / name, folder)
        for edit in edits:
            edit(folder)

    return make


BAD_ADAPTERS = {
    "weights of another LoRA rank": (
        take("rank4", "adapter_model.safetensors"),
        (
            r"LoRA rank r=8 in adapter_config\.json but adapter_model\.safetensors holds rank-4 weights \(lora_A of "
            r"model\.layers\.0\.mlp\.down_proj: \(4, 128\)\): the two files come from different adapters\. Copy all"
        ),
    ),
    "PEFT files of another LoRA rank": (
        take("rank4", "adapter_model.safetensors", "adapter_config.json"),
        r"lookahead_config\.json and adapter_config\.json disagree \(lora_rank 8 vs r 4\): they come from different",
    ),
    "adapter_model.safetensors cut in half": (
        truncate("adapter_model.safetensors", lambda size: size // 2),
        (
            r"adapter_model\.safetensors is not a valid safetensors file: it is truncated \(\d+ bytes; its header "
            r"describes \d+\)\. Copy or download it again"
        ),
    ),
    "adapter_model.safetensors missing its last byte": (
        truncate("adapter_model.safetensors", lambda size: size - 1),
        r"adapter_model\.safetensors is not a valid safetensors file: it is truncated",
    ),
    "adapter_model.safetensors cut inside its header": (
        truncate("adapter_model.safetensors", lambda size: 100),
        r"adapter_model\.safetensors is not a valid safetensors file: it is truncated \(100 bytes, less than its",
    ),
    "lookahead_embeddings.safetensors missing its last byte": (
        truncate("lookahead_embeddings.safetensors", lambda size: size - 1),
        r"lookahead_embeddings\.safetensors is not a valid safetensors file: it is truncated",
    ),
    "lookahead_embeddings.safetensors of 4 bytes": (
        truncate("lookahead_embeddings.safetensors", lambda size: 4),
        r"lookahead_embeddings\.safetensors is not a valid safetensors file: it is truncated \(4 bytes",
    ),
    "adapter for another hidden size": (
        copy_of("hidden32"),
        r"trained for another base model .*hidden_size: adapter 32 vs model 64",
    ),
    "adapter for another hidden size, its config claiming this model": (
        copy_of("hidden32", claim_the_signature_of_the_conftest_llama),
        (
            r"trained for a model with other layer sizes: its LoRA for model\.layers\.0\.mlp\.down_proj maps 64 to 32 "
            r"features; this model's model\.layers\.0\.mlp\.down_proj maps 128 to 64\. Load it into the model it was"
        ),
    ),
    "embeddings for another hidden size": (
        take("hidden32", "lookahead_embeddings.safetensors"),
        (
            r"shape \(8, 32\), expected \(8, 64\) \(num_tokens x hidden size\): the adapter was trained for a model "
            r"with hidden size 32; this model has 64\. Load it into the model it was trained for"
        ),
    ),
    "adapter for a deeper model, its config claiming this model": (
        copy_of("layers4", claim_the_signature_of_the_conftest_llama),
        (
            r"holds LoRA weights for 7 modules this model does not have \(model\.layers\.3\.mlp\.down_proj, "
            r".*\(7 in all\)\): the adapter was trained for another model"
        ),
    ),
    "adapter for a shallower model, its config claiming this model": (
        copy_of("layers2", claim_the_signature_of_the_conftest_llama),
        (
            r"lacks LoRA weights for 7 of the 21 modules that adapter_config\.json targets in this model "
            r"\(model\.layers\.2\."
        ),
    ),
    "LoRA weights with NaN": (
        lambda adapters, folder: save_file(
            {key: value * float("nan") for key, value in load_file(folder / "adapter_model.safetensors").items()},
            folder / "adapter_model.safetensors",
        ),
        r"adapter_model\.safetensors holds non-finite or non-float values .*the file is corrupted",
    ),
}


@pytest.mark.parametrize("case", BAD_ADAPTERS)
def test_a_bad_adapter_is_refused_before_peft_touches_the_model(case, adapters, adapter, monkeypatch):
    breaks, message = BAD_ADAPTERS[case]
    breaks(adapters, adapter)

    def wrap(*args, **kwargs):
        raise AssertionError("PEFT was asked to wrap the model")

    monkeypatch.setattr(PeftModel, "from_pretrained", wrap)
    text = refused(base_model(), adapter, ValueError, message)
    assert text.startswith(f"lookahead adapter {str(adapter)!r}")


def test_another_model_family_is_refused(tmp_path):
    qwen = add_lookahead(tiny_model("qwen3"), LookaheadConfig(num_tokens=NUM_TOKENS))
    get_lookahead(qwen).save_pretrained(tmp_path / "qwen3")
    refused(base_model(), tmp_path / "qwen3", ValueError, r"model_type: adapter 'qwen3' vs model 'llama'")


@pytest.mark.parametrize(
    "argument",
    [
        "/no-such-root-lookahead/adapter",
        "./missing-adapter",
        "~/no-such-lookahead-adapter",
        "a/b/c",
        Path("owner/name"),
    ],
)
def test_a_missing_local_folder_is_named_as_such(argument, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(
        base_model(),
        argument,
        FileNotFoundError,
        rf"^No local folder '{re.escape(str(argument))}'( \(.* exists, but has no '.*'\))?; pass an existing folder "
        r"saved with save_pretrained or a Hub repo id 'owner/name'\.$",
    )


def test_a_missing_folder_under_an_existing_one_names_the_missing_part(tmp_path):
    missing = tmp_path / "adapters" / "run1"
    message = f"No local folder '{missing}' ({tmp_path} exists, but has no 'adapters'); pass"
    refused(base_model(), str(missing), FileNotFoundError, re.escape(message))


def test_a_file_is_no_adapter_folder(adapter):
    refused(base_model(), adapter / "adapter_config.json", NotADirectoryError, r"is a file, not a folder: pass an")


def test_a_local_folder_named_like_a_repo_id_is_loaded_from_disk(adapter, tmp_path, monkeypatch):
    shutil.copytree(adapter, tmp_path / "owner" / "name")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(serialization, "hf_hub_download", None)  # any Hub access would fail
    assert get_lookahead(load_lookahead(tiny_model(), "owner/name")) is not None


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """HF_HUB_OFFLINE=1 with an empty Hugging Face cache; huggingface_hub read the environment at import."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def test_a_repo_missing_from_the_cache_in_offline_mode_says_offline_mode(offline, tmp_path):
    text = refused(
        base_model(),
        "lookahead-org/never-downloaded",
        FileNotFoundError,
        r"^'lookahead-org/never-downloaded' is not a local folder, and offline mode is on \(HF_HUB_OFFLINE=1 is set\) "
        r"while Hub repo 'lookahead-org/never-downloaded' \(revision main\) is not in the local Hugging Face cache",
    )
    assert str(tmp_path / "hf-cache") in text
    assert "adapter_config.json is missing" in text
    assert "Unset HF_HUB_OFFLINE to download it, download it first while online" in text


def test_offline_mode_set_through_transformers_offline_is_named(offline, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    refused(base_model(), "lookahead-org/never-downloaded", FileNotFoundError, r"\(TRANSFORMERS_OFFLINE=1 is set\)")


def test_offline_mode_errors_raised_by_huggingface_hub_itself_say_offline_mode(offline, monkeypatch):
    def download(*args, **kwargs):
        raise OfflineModeIsEnabled("Cannot reach https://huggingface.co: offline mode is enabled.")

    monkeypatch.setattr(serialization, "hf_hub_download", download)
    refused(base_model(), "lookahead-org/any", FileNotFoundError, r"offline mode is on \(HF_HUB_OFFLINE=1 is set\)")


def test_an_unreachable_hub_is_not_reported_as_a_missing_file(monkeypatch):
    def download(*args, **kwargs):
        raise LocalEntryNotFoundError("An error happened while trying to locate the file on the Hub")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(serialization, "hf_hub_download", download)
    refused(
        base_model(),
        "lookahead-org/any",
        ConnectionError,
        r"adapter_config\.json of Hub repo 'lookahead-org/any' \(revision main\) could not be downloaded from .* nor "
        r"found in the local Hugging Face cache .*Check the connection",
    )


def test_offline_mode_loads_a_cached_repo_and_names_offline_mode_for_another(adapter, local_hub, monkeypatch):
    local_hub.publish("lookahead-org/cached", adapter)
    load_lookahead(tiny_model(), "lookahead-org/cached")  # downloads it into the cache
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert get_lookahead(load_lookahead(tiny_model(), "lookahead-org/cached")) is not None
    refused(base_model(), "lookahead-org/not-cached", FileNotFoundError, r"offline mode is on .*not in the local")


def fail_on_call(monkeypatch, owner, name, call, error=RuntimeError):
    """Make `owner.name` run as before but raise `error` at its `call`-th call (after running, if `call` is 0)."""
    original, calls = getattr(owner, name), []

    def failing(*args, **kwargs):
        calls.append(None)
        if len(calls) == call:
            raise error("injected failure")
        result = original(*args, **kwargs)
        if call == 0:
            raise error("injected failure")
        return result

    monkeypatch.setattr(owner, name, failing)


FAILURES = {
    "PEFT fails half-way through swapping in LoRA layers": (LoraModel, "_create_and_replace", 5, RuntimeError),
    "PEFT fails loading the weights": (peft.peft_model, "set_peft_model_state_dict", 1, RuntimeError),
    "the prefill hooks fail once registered": (injection, "_register_prefill_hooks", 0, RuntimeError),
    "an interrupt while PEFT swaps layers": (LoraModel, "_create_and_replace", 11, KeyboardInterrupt),
}


def lookahead_prefill(model):
    """Logits and kept tokens of a prefill that the lookahead scorer compresses."""
    cache = LookaheadCache(budget=20, scorer="lookahead", sink=2, window=4)
    with torch.no_grad():
        logits = model(input_ids=prompt_ids(48), **{CACHE_ARGUMENT: cache}).logits
    assert cache.is_compressed
    return logits, cache.kept_tokens()


@pytest.fixture(scope="module")
def prefill_of_a_clean_load(adapters):
    return lookahead_prefill(load_lookahead(tiny_model(), adapters / "rank8"))


@pytest.mark.parametrize("failure", FAILURES)
def test_a_load_that_fails_while_wrapping_leaves_the_model_as_it_was(
    failure, adapter, prefill_of_a_clean_load, monkeypatch
):
    owner, name, call, error = FAILURES[failure]
    model = base_model()
    with monkeypatch.context() as patch:
        fail_on_call(patch, owner, name, call, error)
        refused(model, adapter, error, "injected failure")
    # The same model then loads, and scores as a model that never saw the failure: no stale hooks or registrations.
    logits, kept = lookahead_prefill(load_lookahead(model, adapter))
    assert torch.equal(logits, prefill_of_a_clean_load[0]) and torch.equal(kept, prefill_of_a_clean_load[1])


def test_add_lookahead_that_fails_leaves_the_model_as_it_was():
    model = base_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match="no_such_proj"):
        add_lookahead(model, LookaheadConfig(target_modules=["no_such_proj"]))
    with pytest.raises(RuntimeError, match="injected failure"), pytest.MonkeyPatch.context() as patch:
        fail_on_call(patch, LoraModel, "_create_and_replace", 3)
        add_lookahead(model)
    assert_unchanged(model, before)
