"""A lookahead adapter's files: PEFT's plus our sidecar and a model card, written to a folder or a Hub repo, and found
in a local folder or downloaded from the Hub (`resolve_adapter_files`; `load_lookahead` reads them)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from safetensors.torch import save_file
from transformers.utils import logging

from .cards import render_model_card
from .config import (
    DEFAULT_ADAPTER_NAME,
    LOOKAHEAD_CONFIG_NAME,
    LOOKAHEAD_WEIGHTS_NAME,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
)

if TYPE_CHECKING:
    from .model import LookaheadAdapter

logger = logging.get_logger(__name__)

ADAPTER_FILES = (PEFT_CONFIG_NAME, PEFT_WEIGHTS_NAME, LOOKAHEAD_CONFIG_NAME, LOOKAHEAD_WEIGHTS_NAME)
_PICKLED_WEIGHTS = ("adapter_model.bin", "adapter_model.pt", "adapter_model.pth")
_WHAT_TO_PASS = "pass an existing folder saved with save_pretrained or a Hub repo id 'owner/name'"


def resolve_adapter_files(
    repo_or_dir: str | Path, revision: str | None = None, token: str | bool | None = None
) -> Path:
    """The local folder holding the four adapter files of `repo_or_dir`, downloaded from the Hub if needed.

    An existing local folder wins over a Hub repo of the same name ('owner/name' is both); a `Path`, or a string that
    cannot be a repo id ('./x', '/x', '~/x', 'a/b/c'), is a local folder, and is reported missing as such.
    """
    local = Path(repo_or_dir).expanduser()
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
    if local.exists():
        raise NotADirectoryError(f"{local} is a file, not a folder: {_WHAT_TO_PASS}.")
    repo_id = str(repo_or_dir)
    if isinstance(repo_or_dir, Path) or not _is_repo_id(repo_id):
        raise FileNotFoundError(f"No local folder {repo_id!r}{_nearest_existing(local)}; {_WHAT_TO_PASS}.")
    paths = []
    for name in ADAPTER_FILES:
        try:
            paths.append(Path(hf_hub_download(repo_id, name, revision=revision, token=token)))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
            # Before EntryNotFoundError, which LocalEntryNotFoundError subclasses: the file may well be on the Hub.
            raise _not_in_cache(repo_id, revision, name, error) from error
        except EntryNotFoundError as error:
            raise FileNotFoundError(
                f"Hub repo {repo_id!r} (revision {revision or 'main'}) has no {name}: it is not a complete lookahead "
                f"adapter, which needs {list(ADAPTER_FILES)} (pickled weights are never loaded)."
            ) from error
        except (RepositoryNotFoundError, RevisionNotFoundError) as error:
            raise FileNotFoundError(
                f"{repo_id!r} is neither a local folder{_nearest_existing(local)} nor a reachable Hub repo (revision "
                f"{revision or 'main'}): {error}"
            ) from error
        except HfHubHTTPError as error:
            raise OSError(f"Downloading {name} from Hub repo {repo_id!r} failed: {error}") from error
    folders = {path.parent for path in paths}
    if len(folders) != 1:
        raise RuntimeError(
            f"The files of {repo_id!r} were downloaded to different folders: {sorted(map(str, folders))}."
        )
    return folders.pop()


def _is_repo_id(text: str) -> bool:
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _nearest_existing(local: Path) -> str:
    """Which part of the missing folder `local` exists here, for a path whose start exists (a typo further on)."""
    absolute = local.absolute()
    existing = next(parent for parent in absolute.parents if parent.exists())
    if existing == Path(absolute.anchor) or existing == Path.cwd():
        return ""
    return f" ({existing} exists, but has no {absolute.relative_to(existing).parts[0]!r})"


def _not_in_cache(repo_id: str, revision: str | None, name: str, error: Exception) -> OSError:
    """Why `name` of `repo_id` could not be had from the local Hugging Face cache nor from the Hub."""
    where = f"Hub repo {repo_id!r} (revision {revision or 'main'})"
    # Read now, not at import: huggingface_hub reads the environment once, and callers (tests) may set it after.
    if constants.HF_HUB_OFFLINE:
        variable = next((v for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(v)), "HF_HUB_OFFLINE")
        return FileNotFoundError(
            f"{repo_id!r} is not a local folder, and offline mode is on ({variable}=1 is set) while {where} is not in "
            f"the local Hugging Face cache ({constants.HF_HUB_CACHE}; {name} is missing). Unset {variable} to "
            f"download it, download it first while online (`hf download {repo_id}`), or pass a local folder saved "
            "with save_pretrained."
        )
    return ConnectionError(
        f"{repo_id!r} is not a local folder, and {name} of {where} could not be downloaded from {constants.ENDPOINT} "
        f"nor found in the local Hugging Face cache ({error}). Check the connection (and HF_ENDPOINT), or pass a "
        "local folder saved with save_pretrained."
    )


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
