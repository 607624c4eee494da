"""What `lookahead-cache train` stores on disk, estimated before anything heavy runs, and the storage path it takes.

A run stores each validation prompt's keys, values and target (always: validation scores them at every checkpoint),
and with `store_prompt_kv` each training prompt's too (see `lookahead_cache.training.data`). The bytes per prompt
token come from the tensors that storing writes, made for a one-token prompt by the loaded model (its layers,
KV heads, head size and dtype, and the target's), so the estimate is what storing will write, not a formula that
a model of another shape breaks. Built-in prompts count at the length they are built for (an upper bound: they fall
a few tokens short of it); the user's prompts at their token counts.

`choose_store_prompt_kv` turns the estimate into the path: it refuses up front a store that does not fit the free
disk of the run folder, and resolves `--store-prompt-kv auto`.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save
from transformers import PreTrainedModel

from ..evaluation.replay import record_prefill
from .config import TrainingConfig
from .data import PROMPT_KV_DIR, TARGETS_DIR, response_target
from .trainer import VALIDATION_DIR
from .user_data import UserData

# `auto` stores when the store fits within this share of the free disk: the rest is left to the machine's other
# users, the checkpoints and the responses.
AUTO_SHARE = 0.5


@dataclass
class DiskEstimate:
    """The bytes a run's stored files take, what its run folder holds of them already, and the free disk there.

    Attributes:
        folder: The run folder.
        token_bytes: Bytes stored per prompt token (keys and values of every layer, and the target).
        prompt_bytes: Bytes stored per prompt besides (the two files' headers).
        training_prompts, training_tokens: The training prompts, and their tokens.
        validation_prompts, validation_tokens: The validation prompts, and their tokens.
        stored_training_bytes, stored_validation_bytes: What the run folder holds of each store already (a resumed
            run).
        free_bytes: Free disk in the run folder's file system.
    """

    folder: Path
    token_bytes: int
    prompt_bytes: int
    training_prompts: int
    training_tokens: int
    validation_prompts: int
    validation_tokens: int
    stored_training_bytes: int
    stored_validation_bytes: int
    free_bytes: int

    @property
    def training_bytes(self) -> int:
        """Bytes of the training store (`store_prompt_kv`), whole."""
        return self.training_tokens * self.token_bytes + self.training_prompts * self.prompt_bytes

    @property
    def validation_bytes(self) -> int:
        """Bytes of the validation store, whole."""
        return self.validation_tokens * self.token_bytes + self.validation_prompts * self.prompt_bytes

    @property
    def training_needed(self) -> int:
        """Bytes the training store still needs on disk."""
        return max(0, self.training_bytes - self.stored_training_bytes)

    @property
    def validation_needed(self) -> int:
        """Bytes the validation store still needs on disk."""
        return max(0, self.validation_bytes - self.stored_validation_bytes)

    def describe(self) -> str:
        """One paragraph: what each store takes, what is stored already, and the free disk."""
        training = (
            f"Disk: storing the training prompts' keys, values and targets (--store-prompt-kv) takes about "
            f"{size(self.training_bytes)} ({self.training_prompts} prompts, {self.training_tokens:,} tokens at "
            f"{size(self.token_bytes)} a token)"
        )
        if self.stored_training_bytes:
            training += f", {size(self.stored_training_bytes)} of it stored already"
        validation = (
            f"validation stores {size(self.validation_bytes)} whatever the path ({self.validation_prompts} prompts)"
        )
        if self.stored_validation_bytes:
            validation += f", {size(self.stored_validation_bytes)} of it stored already"
        return f"{training}; {validation}; {size(self.free_bytes)} free in {self.folder}."


def size(count: int) -> str:
    """Bytes as a short decimal size: `6.7 GB`."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1000:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    return f"{count:.1f} TB"


@torch.no_grad()
def stored_bytes_per_token(model: PreTrainedModel) -> tuple[int, int]:
    """`(bytes per prompt token, bytes per prompt)` of the files storing writes for `model`: the keys and values of
    every recorded layer and the target, from those of a one-token prompt with a one-token response; the second
    is the two safetensors files' headers."""
    device = model.get_input_embeddings().weight.device
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    recording = record_prefill(model, token)
    # As `data._store_prompt_kv` and `prepare_examples` write them.
    prompt_kv = {}
    for prefill in recording.prefills:
        prompt_kv[f"keys.{prefill.layer_idx}"] = prefill.keys[0].contiguous().cpu()
        prompt_kv[f"values.{prefill.layer_idx}"] = prefill.values[0].contiguous().cpu()
    target = {"target": response_target(model, recording, token).cpu()}
    token_bytes, file_bytes = 0, 0
    for tensors in (prompt_kv, target):
        data = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        token_bytes += data
        # The header of a long prompt's file spells longer shapes and offsets: a few more digits per tensor.
        file_bytes += len(save(tensors)) - data + 16 * len(tensors)
    return token_bytes, file_bytes


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder` (0 if it does not exist)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) if folder.is_dir() else 0


def free_disk(folder: Path) -> int:
    """Free bytes in the file system that `folder` (or, if it is not made yet, its nearest existing parent) is on."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def estimate_disk(
    model: PreTrainedModel,
    config: TrainingConfig,
    out_dir: str | Path,
    user_data: UserData | None = None,
) -> DiskEstimate:
    """What `train(model, ..., config, out_dir)` stores: see `DiskEstimate`.

    Args:
        user_data: The prompts of `config.data_files` (`data.read_config_data`), split as training splits them.
    """
    out = Path(out_dir)
    token_bytes, prompt_bytes = stored_bytes_per_token(model)
    counts = {}
    for validation in (False, True):
        per_length = config.validation_samples_per_task if validation else config.samples_per_task
        prompts = sum(per_length) * len(config.tasks)
        tokens = sum(length * count for length, count in zip(config.lengths, per_length)) * len(config.tasks)
        counts[validation] = [prompts, tokens]
    if user_data is not None:
        for validation, held in zip((False, True), user_data.split(config.validation_fraction)):
            counts[validation][0] += len(held)
            counts[validation][1] += sum(len(prompt.input_ids) for prompt in held)
    return DiskEstimate(
        folder=out,
        token_bytes=token_bytes,
        prompt_bytes=prompt_bytes,
        training_prompts=counts[False][0],
        training_tokens=counts[False][1],
        validation_prompts=counts[True][0],
        validation_tokens=counts[True][1],
        stored_training_bytes=folder_bytes(out / PROMPT_KV_DIR) + folder_bytes(out / TARGETS_DIR),
        stored_validation_bytes=sum(folder_bytes(out / VALIDATION_DIR / name) for name in (PROMPT_KV_DIR, TARGETS_DIR)),
        free_bytes=free_disk(out),
    )


def choose_store_prompt_kv(
    requested: bool | str, estimate: DiskEstimate, epochs: int, recorded: bool | None = None
) -> tuple[bool, str]:
    """`(store_prompt_kv, why)`: the storage path a run takes, and a line saying why.

    Args:
        requested: True (store), False (rerun each prompt at every step) or "auto": store when the training store
            fits within `AUTO_SHARE` of the free disk and `epochs` > 1 (storing pays off only when prompts are read
            again; one epoch makes each response in the step that trains on it, from the same prefill).
        recorded: The choice recorded in the run folder by the run being resumed (None: a new run); "auto" keeps
            it, so that the resumed run is the same run.

    Raises:
        ValueError: The store the path needs (validation's, and the training prompts' when storing) does not fit
            the free disk; the message gives the fix.
    """
    if requested == "auto":
        if recorded is not None:
            store, why = recorded, "--store-prompt-kv auto keeps the choice of the run it resumes"
        elif epochs < 2:
            store, why = False, "--store-prompt-kv auto: one epoch reads each prompt once, so storing would not pay"
        elif estimate.training_needed + estimate.validation_needed > AUTO_SHARE * estimate.free_bytes:
            store = False
            why = (
                f"--store-prompt-kv auto: the stores need {size(estimate.training_needed + estimate.validation_needed)}"
                f", more than {AUTO_SHARE:.0%} of the free disk"
            )
        else:
            store = True
            why = (
                f"--store-prompt-kv auto: the stores fit within {AUTO_SHARE:.0%} of the free disk, and {epochs} epochs"
            )
            why += " read each prompt again"
    elif requested in (True, False):
        store, why = bool(requested), "--store-prompt-kv" if requested else "--no-store-prompt-kv, the default"
    else:
        raise ValueError(f"store_prompt_kv={requested!r} must be True, False or 'auto'.")
    needed = estimate.validation_needed + (estimate.training_needed if store else 0)
    if store and needed > estimate.free_bytes:
        raise ValueError(
            f"Storing the prompts' keys and values needs {size(needed)} more on disk, but {estimate.folder} has "
            f"{size(estimate.free_bytes)} free ({estimate.describe()}) Drop --store-prompt-kv (each step then reruns "
            "its prompt's prefill), or free space, or pick an --out on a larger disk."
        )
    if needed > estimate.free_bytes:
        raise ValueError(
            f"The validation prompts' stored keys and values need {size(needed)} more on disk, but {estimate.folder} "
            f"has {size(estimate.free_bytes)} free ({estimate.describe()}) Free space, pick an --out on a larger "
            "disk, or validate on fewer prompts (--validation-samples-per-task, --validation-fraction; 0: none)."
        )
    return store, why


def describe_path(store: bool, why: str) -> str:
    """The line naming the storage path taken."""
    path = (
        "store each prompt's keys, values and target, and read them at every step"
        if store
        else "rerun each prompt's prefill at every step (nothing stored for the training prompts)"
    )
    return f"Path ({why}): {path}."
