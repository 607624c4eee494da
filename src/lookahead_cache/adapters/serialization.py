"""A lookahead adapter's files: PEFT's plus our sidecar and a model card, written to a folder or a Hub repo, and found
in a local folder or downloaded from the Hub (`resolve_adapter_files`; `load_lookahead` reads them)."""

from __future__ import annotations

import json
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
    profiles_from: str | Path | bool | None = None,
) -> str:
    """Save the adapter and upload it to Hub repo `repo_id` (created if needed), with its LU-KV profiles; returns
    the commit URL.

    The profiles (`lukv_profile_<scorer>.json` and `.safetensors`, and the `.png` heatmap where there is one) go
    beside the adapter files, where `load_lookahead(model, repo_id)` followed by
    `LookaheadCache(allocation="lukv", ...)` finds them. Which ones:

    - by default (`profiles_from=None`), those shipped with the adapter: every profile in the folder or Hub repo it
      was loaded from (`adapter.source`), and the profiles read from there so far (`adapter.profiles`); none for an
      adapter made by `add_lookahead` that no profile was given;
    - `profiles_from=<folder>`: the profiles in that local folder (e.g. the `--out` of `lookahead-cache profile`),
      instead; a folder without any is refused;
    - `profiles_from=False`: none (the adapter and its card alone).

    A profile whose calibration records another adapter's fingerprint (the adapter changed since it was profiled)
    is uploaded with a warning: profile the adapter again for a profile that matches it.
    """
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # Gathered before the repo is created: a refused `profiles_from` leaves the Hub untouched.
        scorers = _gather_profiles(adapter, folder, profiles_from, token)
        save_lookahead(adapter, folder, evaluation=evaluation)
        _warn_about_other_adapters(adapter, folder, scorers)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, commit_message=commit_message)
    return str(commit)


PROFILE_PREFIX = "lukv_profile_"
PROFILE_SUFFIXES = (".json", ".safetensors", ".png")


def profile_files(names) -> list[str]:
    """The LU-KV profile files among file `names` (`lukv_profile_<scorer>.json`, `.safetensors`, `.png`)."""
    return sorted(
        name
        for name in names
        if "/" not in name and name.startswith(PROFILE_PREFIX) and name.endswith(PROFILE_SUFFIXES)
    )


def _gather_profiles(
    adapter: LookaheadAdapter, out: Path, profiles_from: str | Path | bool | None, token: str | bool | None
) -> list[str]:
    """Copy the profiles `push_lookahead_to_hub` uploads into `out`; returns their scorers."""
    if profiles_from is False:
        return []
    if profiles_from is not None and profiles_from is not True:
        local = Path(profiles_from).expanduser()
        names = profile_files(path.name for path in local.iterdir()) if local.is_dir() else []
        if not any(name.endswith(".safetensors") for name in names):
            raise ValueError(
                f"profiles_from={str(profiles_from)!r} is not a local folder holding a LU-KV profile "
                "(lukv_profile_<scorer>.json and .safetensors): pass the --out folder of `lookahead-cache profile`, "
                "or leave profiles_from out to upload the profiles shipped with the adapter."
            )
        for name in names:
            shutil.copy(local / name, out / name)
        return _scorers_in(out)
    source = adapter.source
    if source is not None and Path(source).expanduser().is_dir():
        local = Path(source).expanduser()
        for name in profile_files(path.name for path in local.iterdir()):
            shutil.copy(local / name, out / name)
    elif source is not None:
        try:
            names = profile_files(HfApi(token=token).list_repo_files(source, revision=adapter.source_revision))
            for name in names:
                shutil.copy(hf_hub_download(source, name, revision=adapter.source_revision, token=token), out / name)
        except (HfHubHTTPError, OSError, ValueError) as error:
            # The profiles read from there so far are still uploaded, below.
            logger.warning(
                f"The LU-KV profiles of the adapter's Hub repo {source!r} could not be listed or downloaded "
                f"({error}): only those read from it so far ({', '.join(sorted(adapter.profiles)) or 'none'}) are "
                "uploaded. Pass profiles_from=<folder> to upload others."
            )
    copied = _scorers_in(out)
    for scorer, profile in adapter.profiles.items():
        if scorer not in copied:
            profile.save_pretrained(out)
    return _scorers_in(out)


def _scorers_in(folder: Path) -> list[str]:
    names = {path.name for path in folder.iterdir()}
    return sorted(
        name[len(PROFILE_PREFIX) : -len(".json")]
        for name in names
        if name.startswith(PROFILE_PREFIX)
        and name.endswith(".json")
        and name[: -len(".json")] + ".safetensors" in names
    )


def _warn_about_other_adapters(adapter: LookaheadAdapter, folder: Path, scorers: list[str]) -> None:
    fingerprint = None
    for scorer in scorers:
        try:
            recorded = json.loads((folder / f"{PROFILE_PREFIX}{scorer}.json").read_text())["calibration"]
            recorded = recorded.get("lookahead_adapter_sha256")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        if recorded is None:
            continue
        fingerprint = fingerprint or adapter.fingerprint()
        if recorded != fingerprint:
            logger.warning(
                f"The LU-KV profile for {scorer!r} was made with another lookahead adapter (fingerprint "
                f"{recorded[:12]}, this one {fingerprint[:12]}): it is uploaded, but profile this adapter again "
                "(lookahead-cache profile --adapter ...) for a profile that matches it."
            )
