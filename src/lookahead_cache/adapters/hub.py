"""Saving and loading lookahead adapters: PEFT's files plus our sidecar, from a local dir or a Hub repo."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from peft import LoraConfig, PeftModel
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging

from .cards import render_model_card
from .config import LOOKAHEAD_CONFIG_NAME, LOOKAHEAD_WEIGHTS_NAME, BaseModelSignature, LookaheadConfig
from .lookahead import DEFAULT_ADAPTER_NAME, LookaheadAdapter, attach_lookahead, check_lora_config, peft_wrapping

logger = logging.get_logger(__name__)

PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_FILES = (PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, LOOKAHEAD_CONFIG_NAME, LOOKAHEAD_WEIGHTS_NAME)
_PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")


def resolve_adapter_files(
    repo_or_dir: str | Path, revision: str | None = None, token: str | bool | None = None
) -> Path:
    """The local folder holding the four adapter files of `repo_or_dir`, downloaded from the Hub if needed."""
    local = Path(repo_or_dir)
    if local.is_dir():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos; {local} is a local folder.")
        missing = [name for name in ADAPTER_FILES if not (local / name).is_file()]
        if missing:
            pickled = [name for name in _PICKLED_WEIGHTS if (local / name).is_file()]
            hint = (
                f" It holds {pickled}: pickled weights are never loaded (unpickling runs code); re-save the adapter "
                "with safetensors."
                if pickled and PEFT_WEIGHTS_NAME in missing
                else " Save adapters with LookaheadAdapter.save_pretrained, which writes all of them."
            )
            raise FileNotFoundError(f"{local} is not a complete lookahead adapter: missing {missing}.{hint}")
        return local
    repo_id = str(repo_or_dir)
    paths = []
    for name in ADAPTER_FILES:
        try:
            paths.append(Path(hf_hub_download(repo_id, name, revision=revision, token=token)))
        except EntryNotFoundError as error:
            raise FileNotFoundError(
                f"Hub repo {repo_id!r} (revision {revision or 'main'}) has no {name}: it is not a complete lookahead "
                f"adapter, which needs {list(ADAPTER_FILES)} (pickled weights are never loaded)."
            ) from error
        except (RepositoryNotFoundError, RevisionNotFoundError) as error:
            raise FileNotFoundError(
                f"{repo_or_dir!r} is neither a local folder nor a reachable Hub repo (revision {revision or 'main'}): "
                f"{error}"
            ) from error
        except HfHubHTTPError as error:
            raise OSError(f"Downloading {name} from Hub repo {repo_id!r} failed: {error}") from error
    folders = {path.parent for path in paths}
    if len(folders) != 1:
        raise RuntimeError(f"The files of {repo_id!r} were downloaded to different folders: {sorted(map(str, folders))}.")
    return folders.pop()


def load_lookahead(
    base_model: PreTrainedModel,
    repo_or_dir: str | Path,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    adapter_name: str = DEFAULT_ADAPTER_NAME,
    is_trainable: bool = False,
) -> PeftModel:
    """Load a trained lookahead adapter into `base_model`, so that `LookaheadCache(scorer="lookahead")` works.

    PEFT loads the lookahead LoRA (`PeftModel.from_pretrained`); the lookahead embeddings and config come from our
    sidecar files in the same folder or repo. Only safetensors files are read.

    Args:
        base_model: The transformers model the adapter was trained for.
        repo_or_dir: A local folder or a Hub repo id.
        revision: Branch, tag or commit of a Hub repo.
        token: Hub token, as in `huggingface_hub`.
        tokenizer: If given, its vocabulary must match the one the adapter was trained with.
        adapter_name: PEFT adapter name.
        is_trainable: Load the LoRA and embeddings with gradients enabled (to continue training).

    Returns:
        The `PeftModel` wrapping `base_model`. A plain `generate` on it behaves exactly like `base_model`.
    """
    folder = resolve_adapter_files(repo_or_dir, revision=revision, token=token)
    source = f"lookahead adapter {str(repo_or_dir)!r}"
    config = LookaheadConfig.from_json_file(folder / LOOKAHEAD_CONFIG_NAME)
    model_signature = BaseModelSignature.of(base_model.config, tokenizer)
    if config.base_model is None:
        raise ValueError(f"{source}: {LOOKAHEAD_CONFIG_NAME} does not record the base model it was trained for.")
    mismatches = config.base_model.mismatches(model_signature)
    if mismatches:
        raise ValueError(
            f"{source} was trained for another base model ({config.base_model_name_or_path or config.base_model.model_type}) "
            f"than the one given ({getattr(base_model.config, '_name_or_path', '') or model_signature.model_type}): "
            + "; ".join(mismatches)
        )
    check_lora_config(LoraConfig.from_pretrained(str(folder)), source)
    embeddings = _load_embeddings(folder / LOOKAHEAD_WEIGHTS_NAME, config, base_model, source)
    try:
        with peft_wrapping():
            peft_model = PeftModel.from_pretrained(
                base_model, str(folder), adapter_name=adapter_name, is_trainable=is_trainable
            )
    except SafetensorError as error:
        raise ValueError(f"{source}: {PEFT_WEIGHTS_NAME} is not a valid safetensors file ({error}).") from error
    adapter = LookaheadAdapter(config, peft_model, adapter_name)
    with torch.no_grad():
        adapter.embeddings.copy_(embeddings)
    adapter.embeddings.requires_grad_(is_trainable)
    adapter.source, adapter.source_revision = str(repo_or_dir), revision
    attach_lookahead(peft_model, adapter)
    return peft_model


def _load_embeddings(path: Path, config: LookaheadConfig, base_model: PreTrainedModel, source: str) -> torch.Tensor:
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{source}: {path.name} is not a valid safetensors file ({error}).") from error
    if set(tensors) != {"embeddings"}:
        raise ValueError(f"{source}: {path.name} must hold exactly one tensor named 'embeddings', found {sorted(tensors)}.")
    embeddings = tensors["embeddings"]
    expected = (config.num_tokens, base_model.get_input_embeddings().weight.shape[-1])
    if tuple(embeddings.shape) != expected:
        raise ValueError(
            f"{source}: {path.name} holds embeddings of shape {tuple(embeddings.shape)}, expected {expected} "
            "(num_tokens x hidden size)."
        )
    if not torch.isfinite(embeddings).all():
        raise ValueError(f"{source}: {path.name} holds non-finite values; the file is corrupted.")
    return embeddings


def save_lookahead(adapter: LookaheadAdapter, save_directory: str | Path, evaluation: str | None = None) -> Path:
    """Write the adapter (PEFT files, our sidecar, a model card) to `save_directory`; see `LookaheadAdapter`."""
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    model = adapter.model
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, selected_adapters=[adapter.adapter_name], safe_serialization=True)
        # PEFT nests every adapter but "default" in a folder of its name.
        saved = Path(tmp) if adapter.adapter_name == DEFAULT_ADAPTER_NAME else Path(tmp) / adapter.adapter_name
        for name in (PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME):
            shutil.copy(saved / name, out / name)
    adapter.config.to_json_file(out / LOOKAHEAD_CONFIG_NAME)
    save_file(
        {"embeddings": adapter.embeddings.detach().to("cpu").contiguous()},
        str(out / LOOKAHEAD_WEIGHTS_NAME),
        metadata={"format": "pt", "lookahead_cache_format_version": str(adapter.config.format_version)},
    )
    (out / "README.md").write_text(render_model_card(adapter.config, evaluation=evaluation))
    return out


def push_lookahead_to_hub(
    adapter: LookaheadAdapter,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload lookahead adapter",
    evaluation: str | None = None,
) -> str:
    """Save the adapter and upload it to Hub repo `repo_id` (created if needed); returns the commit URL."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_lookahead(adapter, tmp, evaluation=evaluation)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
    return str(commit)
