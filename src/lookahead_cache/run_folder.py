"""The run folders of the resumable commands (eval, train, profile): what resuming one reads, checks and writes.

An interrupted run leaves at worst a torn last line in a JSON-lines file, since rows are appended one whole line
at a time and the other files a resumed run reads back (settings, cached tensors) are written under a temporary
name, then renamed into place. Resuming drops the torn line (with a warning) and redoes its row. Anything else that
does not read back (a damaged line before the last, a safetensors file that does not parse) is no interruption's
doing: the error names the file, and what to do.

A resumed run must have the settings that made the rows it continues; `check_same_run` refuses one that does not,
naming each setting that differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from transformers.utils import logging

logger = logging.get_logger(__name__)

# Values a fingerprint reads per tensor: enough to tell apart other weights or a fine-tune, read in milliseconds.
FINGERPRINT_VALUES = 1024
# Lists longer than this are shown in messages by their length and hash, not item by item (token ids).
SHOWN_ITEMS = 8


def read_jsonl(path: Path, check: Callable[[dict[str, Any], str], None] | None = None) -> list[dict[str, Any]]:
    """The JSON objects of `path`, one per line; blank lines are skipped, and a file not written yet holds none.

    A last line that lacks its newline and is not JSON is what an interrupted append leaves: it is left out with a
    warning naming the file and line, and `append_jsonl` removes it before the row is written again. A last row
    that is whole but lacks its newline is read as any other.

    Args:
        check: Called as `check(row, "path:line")` on every row, to refuse one with a message naming its line.

    Raises:
        ValueError: A line other than a torn last one is not a JSON object; the message names the file and line.
    """
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    torn = _torn_last_line(data)
    if torn is not None:
        logger.warning(
            f"{path}:{torn}: the last line was cut short (an interrupted write): it is left out, and resuming the run "
            "redoes its row."
        )
        lines = lines[: torn - 1]
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        row = _parse_line(line, where)
        if check is not None:
            check(row, where)
        rows.append(row)
    return rows


@contextmanager
def append_jsonl(path: Path) -> Iterator[Callable[[dict[str, Any]], None]]:
    """Yields `append(row)`, which writes `row` to `path` as one line and flushes it, so that an interruption
    loses at most the row being written.

    The file is first made to end at a line boundary: a torn last line (see `read_jsonl`) is cut off, a whole last
    row missing its newline gets it, so that the next row never lands on the end of another.
    """
    _end_at_line_boundary(path)
    with path.open("a", encoding="utf-8") as file:

        def append(row: dict[str, Any]) -> None:
            file.write(json.dumps(row) + "\n")
            file.flush()

        yield append


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object of a settings or state file of a run folder; one that does not parse (edited by hand, or
    broken by something outside the run: the run writes them whole) is an error naming the file and the fix.

    Raises:
        ValueError: `path` does not hold one JSON object.
    """
    try:
        data = json.loads(path.read_bytes())
    except ValueError as error:
        reason = f"{error.msg} at line {error.lineno}" if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        raise ValueError(
            f"{path} is not valid JSON ({reason}). The run wrote it whole, so it was changed since: restore it, or "
            "start the run in a new --out."
        ) from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}: restore it, or use a new --out.")
    return data


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace `path` with `rows`, one per line, at once (see `write_text`)."""
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_text(path: Path, text: str) -> None:
    """Write `path` under a temporary name and rename it into place: an interruption leaves the old file or the new
    one, never a part of either."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, under a temporary name renamed into place (see `write_text`)."""
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)


def load_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """`safetensors.torch.load_file` of a file in a run folder, which names the file and the fix if it is damaged.

    Raises:
        ValueError: `path` is not a whole safetensors file.
    """
    try:
        return load_file(str(path), device=device)
    except SafetensorError as error:
        raise _damaged(path, error) from None


def safetensors_metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file in a run folder, read from its header alone. Reading it also checks that
    the header parses and covers the whole file, which a cut short or overwritten file fails.

    Raises:
        ValueError: `path` is not a whole safetensors file; the message names it and the fix.
    """
    try:
        with safe_open(str(path), "pt") as file:
            return file.metadata() or {}
    except SafetensorError as error:
        raise _damaged(path, error) from None


def check_same_run(folder: Path, recorded: Mapping[str, Any], current: Mapping[str, Any], what: str = "a run") -> None:
    """Refuse to continue the run in `folder` with settings that change what it holds.

    Both map the settings a resumed run must share, each by the name the user knows it under (an option, a config
    field), to its value. A setting that `recorded` lacks was not recorded by the version that started the run: it
    cannot be compared, so a warning says so and the run resumes (the caller records it from then on).

    Raises:
        ValueError: Settings differ; the message names each, with the folder's value and this call's.
    """
    unrecorded = [name for name in current if name not in recorded]
    if unrecorded:
        logger.warning(
            f"{folder} does not record {', '.join(unrecorded)} (an earlier version started it): resuming without "
            "checking that they are this call's."
        )
    differing = [name for name, value in current.items() if name in recorded and recorded[name] != value]
    if differing:
        held = ", ".join(f"{name} {_shown(recorded[name])}" for name in differing)
        asked = ", ".join(f"{name} {_shown(current[name])}" for name in differing)
        raise ValueError(
            f"{folder} holds {what} with {held}; this call has {asked}: pass the same settings to resume, "
            "or a new --out."
        )


def model_fingerprint(model: torch.nn.Module) -> str:
    """16 hex digits of a sha256 over the model's parameters and buffers: names, shapes, dtypes and up to 1024
    evenly spaced values of each. Other weights (another checkpoint, a fine-tune, another dtype) change it; reading
    it takes milliseconds, whatever the model's size.

    A PEFT model is read through to its base model's own weights, so loading a lookahead adapter leaves it as it was.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tensors = {}
    for name, tensor in [*base.named_parameters(), *base.named_buffers()]:
        # PEFT wraps each adapted layer: its weights move under `base_layer`, beside the LoRA's own.
        if "lora_" not in name:
            tensors[name.replace(".base_layer.", ".")] = tensor
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach()
        digest.update(f"{name} {tuple(tensor.shape)} {tensor.dtype}\n".encode())
        values = tensor.flatten()[:: max(1, tensor.numel() // FINGERPRINT_VALUES)]
        digest.update(values.float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _parse_line(line: bytes, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as error:
        reason = error.msg if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        raise ValueError(
            f"{where}: not valid JSON ({reason}); each line must be one JSON object. The file was damaged there: "
            "delete or mend that line, then rerun."
        ) from None
    if isinstance(row, dict):
        return row
    raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}.")


def _torn_last_line(data: bytes) -> int | None:
    """The number of the last line of `data` if an interrupted append cut it short, else None.

    An appended row ends with its newline; a last line without one that still parses is a whole row (written by
    hand, or by another tool) that merely lacks it.
    """
    if not data or data.endswith(b"\n"):
        return None
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except ValueError:
        return data.count(b"\n", 0, start) + 1
    return None


def _end_at_line_boundary(path: Path) -> None:
    if not path.exists():
        return
    with path.open("rb+") as file:
        data = file.read()
        if not data or data.endswith(b"\n"):
            return
        if _torn_last_line(data) is None:
            file.write(b"\n")
        else:
            file.truncate(data.rfind(b"\n") + 1)


def _damaged(path: Path, error: SafetensorError) -> ValueError:
    return ValueError(
        f"{path} is damaged: it does not read as a safetensors file ({error}). It is recomputed when missing: "
        "delete it and rerun the same command."
    )


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) > SHOWN_ITEMS:
        digest = hashlib.sha256(json.dumps(value).encode()).hexdigest()[:12]
        return f"[{len(value)} items, sha256 {digest}]"
    return json.dumps(value)
