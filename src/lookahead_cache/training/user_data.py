"""The user's own prompts, from JSONL files or a `datasets` folder, for `lookahead-cache train --data` and
`profile --data`.

One JSON object per line, in the two forms TRL's datasets use:

- `{"prompt": "..."}`: plain text, tokenised as it is (with the tokenizer's special tokens, such as a BOS);
- `{"messages": [{"role": "user", "content": "..."}, ...]}`: a chat, rendered with the tokenizer's chat template
  and its generation prompt (roles `system`, `user`, `assistant`, `tool`; the last message not the assistant's).

Either may carry `"response": "..."`: training then takes its first `response_tokens` tokens as the target answer
instead of the model's own greedy one. Blank lines are allowed.

Bad data stops the run or is skipped, never dropped silently. What can only be a mistake in the file (malformed
JSON, unknown keys or roles, both or neither of `prompt` and `messages`, an empty response) raises a `ValueError`
naming the file, the line and the fix. What a large scraped or exported data set commonly holds, and what the user
would drop anyway, is skipped: each such line is logged as a warning, and the counts are summarised
(`UserData.skipped_summary`). Those are empty prompts (nothing but whitespace) and prompts that do not fit the
model's context (`max_position_embeddings`) with their response.

A prompt's key is `data/<file name>/<line>@<12 hex digits of the line's sha256>`: stable while the line is
unchanged, wherever the file lives, so that a responses file made once serves every later run over the same lines
(and a changed line gets a new key, and a new response).

A `--data` entry may also be a folder:

- a folder of `.jsonl` files: its files, in name order, as if each were passed (the same keys);
- a folder written by `datasets`' `Dataset.save_to_disk`, whose rows are read as the lines above (columns `prompt`
  or `messages`, optionally `response`; a None value, which a column that only some rows fill gives the others,
  counts as the key left out). A `DatasetDict` folder needs its split named: `folder:train`. Reading one needs the
  optional `datasets` package (`pip install 'lookahead-cache[train]'`). A row's key is
  `data/<folder name>[:<split>]/<row index>@<12 hex digits of the sha256 of the row as sorted JSON>`.

A resumed run checks `file_digest` of each entry: a file's bytes, or those of a folder's data files (its `.jsonl`
files, or a dataset's `.arrow` files), so that a changed folder is refused as a changed file is.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

logger = logging.get_logger(__name__)

PROMPT_KEYS = {"prompt", "messages"}
OPTIONAL_KEYS = {"response"}
ROLES = ("system", "user", "assistant", "tool")
MESSAGE_KEYS = {"role", "content"}
# Length buckets of user prompts are powers of two from here: responses are made in batches of one bucket.
SMALLEST_BUCKET = 64


@dataclass
class UserPrompt:
    """One prompt of the user's data, with what `prepare_examples` reads of a built-in `Sample`.

    Attributes:
        key: Its name in a responses file (see the module's docstring).
        input_ids: The tokenised prompt.
        response_ids: The tokens of the given response, cut to `response_tokens`; None: the model's own.
        context_length: The length bucket its response is batched in (the next power of two of its length).
    """

    key: str
    input_ids: list[int]
    response_ids: list[int] | None = None

    @property
    def id(self) -> str:
        return self.key

    @property
    def context_length(self) -> int:
        return max(SMALLEST_BUCKET, 1 << (len(self.input_ids) - 1).bit_length())

    def prompt_ids(self, tokenizer: PreTrainedTokenizerBase) -> tuple[torch.Tensor, torch.Tensor]:
        """`(prompt_ids, [])`, each `[1, n]`: a user prompt has no question apart from its context."""
        return torch.tensor([self.input_ids]), torch.zeros(1, 0, dtype=torch.long)


@dataclass
class UserData:
    """The prompts read from the user's files, in file and line order, and the lines skipped, by reason."""

    prompts: list[UserPrompt]
    skipped: Counter = field(default_factory=Counter)

    def split(self, validation_fraction: float) -> tuple[list[UserPrompt], list[UserPrompt]]:
        """`(training, validation)`: `round(validation_fraction * n)` prompts held out, those whose keys hash lowest,
        so that the split depends on the prompts alone (not on their order or on a seed)."""
        held_out = round(validation_fraction * len(self.prompts))
        if held_out and held_out == len(self.prompts):
            raise ValueError(
                f"A validation fraction of {validation_fraction} holds out all {held_out} prompts of the data files, "
                "leaving none to train on: lower --validation-fraction, or add prompts."
            )
        ranked = sorted(self.prompts, key=lambda prompt: hashlib.sha256(prompt.key.encode()).hexdigest())
        validation_keys = {prompt.key for prompt in ranked[:held_out]}
        return (
            [prompt for prompt in self.prompts if prompt.key not in validation_keys],
            [prompt for prompt in self.prompts if prompt.key in validation_keys],
        )

    def skipped_summary(self) -> str | None:
        """One line counting the skipped lines by reason, or None if none was."""
        if not self.skipped:
            return None
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.skipped.items()))
        return f"Skipped {self.skipped.total()} lines of the data files ({reasons}); each is logged above."


DATASET_DICT_NAME = "dataset_dict.json"
DATASET_FILES = ("state.json", "dataset_info.json")
DATASETS_INSTALL = "pip install 'lookahead-cache[train]' (or pip install datasets)"
_DATA_KINDS = (
    "JSONL files of prompts, folders of them, or folders saved by datasets' save_to_disk (folder:split for a "
    "DatasetDict)"
)


@dataclass(frozen=True)
class DataSource:
    """One `--data` entry: a JSONL file, a folder of them, or a `datasets` folder (with the split of a DatasetDict).

    Attributes:
        path: The file or folder.
        split: The split named after a DatasetDict folder (`folder:train`), else None.
        kind: "jsonl", "jsonl_folder", "dataset" or "dataset_dict".
    """

    path: Path
    split: str | None
    kind: str

    @classmethod
    def of(cls, entry: str | Path) -> DataSource:
        """The source an entry names; raises a ValueError with the fix where it names none."""
        path, split = Path(entry), None
        if not path.exists() and isinstance(entry, str) and ":" in entry:
            folder, _, name = entry.rpartition(":")
            if name and Path(folder).is_dir():
                path, split = Path(folder), name
        if not path.exists():
            raise ValueError(f"The data {entry} does not exist: pass {_DATA_KINDS} to --data.")
        if path.is_file():
            kind = "jsonl"
        elif (path / DATASET_DICT_NAME).is_file():
            kind = "dataset_dict"
        elif all((path / name).is_file() for name in DATASET_FILES):
            kind = "dataset"
        elif any(path.glob("*.jsonl")):
            kind = "jsonl_folder"
        else:
            raise ValueError(
                f"The data folder {path} holds no .jsonl file and is not a folder saved by datasets' save_to_disk "
                f"(no {DATASET_DICT_NAME}, state.json or dataset_info.json): pass {_DATA_KINDS} to --data."
            )
        if split is not None and kind != "dataset_dict":
            raise ValueError(
                f"The data {entry} names a split ({split!r}), but {path} is not a DatasetDict folder (no "
                f"{DATASET_DICT_NAME}): pass {path} without ':{split}'."
            )
        if kind == "dataset_dict":
            splits = _dataset_dict_splits(path)
            if split is None or split not in splits:
                named = "names no split" if split is None else f"names the split {split!r}, which it lacks"
                raise ValueError(
                    f"The data {entry} is a DatasetDict folder (splits: {', '.join(splits)}) and {named}: name one "
                    f"after a colon, e.g. --data {path}:{splits[0] if splits else 'train'}."
                )
        return cls(path, split, kind)

    @property
    def name(self) -> str:
        """How prompt keys name a dataset: its folder's name, and its split."""
        return self.path.name if self.split is None else f"{self.path.name}:{self.split}"

    def files(self) -> list[Path]:
        """The files whose bytes are its content: the JSONL file(s), or the dataset's arrow files."""
        if self.kind == "jsonl":
            return [self.path]
        if self.kind == "jsonl_folder":
            return sorted(self.path.glob("*.jsonl"))
        folder = self.path if self.split is None else self.path / self.split
        return sorted(folder.glob("*.arrow"))


def _dataset_dict_splits(path: Path) -> list[str]:
    try:
        return list(json.loads((path / DATASET_DICT_NAME).read_text())["splits"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path / DATASET_DICT_NAME} does not read as a DatasetDict's ({error}): save the dataset again."
        ) from None


def file_digest(path: str | Path) -> str:
    """16 hex digits of the sha256 of a data file's bytes: what a resumed run checks its data against.

    For a folder (see `DataSource`), the sha256 of its data files' names and bytes: a `.jsonl` folder's files, or a
    dataset's `.arrow` files (those of the split named with `folder:split`), which change with its rows.
    """
    source = DataSource.of(path)
    if source.kind == "jsonl":
        return _sha256_of(source.path).hexdigest()[:16]
    digest = hashlib.sha256()
    for file in source.files():
        digest.update(f"{file.name}\0{_sha256_of(file).hexdigest()}\0".encode())
    return digest.hexdigest()[:16]


def _sha256_of(path: Path):
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def read_user_data(
    paths: list[str | Path],
    tokenizer: PreTrainedTokenizerBase,
    context_length: int | None,
    response_tokens: int,
) -> UserData:
    """The prompts of the JSONL `paths`, folders of them, or `datasets` folders (see the module's docstring for the
    format and what is refused or skipped).

    Args:
        context_length: The model's context; a prompt that does not fit it with its response (the given one, or
            `response_tokens`) is skipped. None: no limit.
        response_tokens: Tokens of each target answer: a given response is cut to them.

    Raises:
        ValueError: A file is missing or passed twice, or a line can only be a mistake; the message names the file,
            the line and the fix. A datasets folder without the `datasets` package, or with columns that are not
            the format's, is refused with the fix.
    """
    data = UserData(prompts=[])
    seen = set()
    for entry in paths:
        source = DataSource.of(entry)
        parts = (
            [(file.resolve(), None) for file in source.files()]
            if source.kind in ("jsonl", "jsonl_folder")
            else [(source.path.resolve(), source.split)]
        )
        twice = [part for part in parts if part in seen]
        if twice:
            raise ValueError(
                f"The data {entry} is passed twice ({twice[0][0]} also comes with another entry): its prompts would "
                "count twice; pass it once."
            )
        seen.update(parts)
        if source.kind in ("dataset", "dataset_dict"):
            _read_dataset(data, source, tokenizer, context_length, response_tokens)
            continue
        for path in source.files():
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, start=1):
                    if line.strip():
                        _read_line(data, path, number, line, tokenizer, context_length, response_tokens)
    if not data.prompts:
        raise ValueError(
            f"The data {', '.join(map(str, paths))} hold no usable prompt ({data.skipped_summary() or 'empty'})."
        )
    return data


def _read_dataset(
    data: UserData,
    source: DataSource,
    tokenizer: PreTrainedTokenizerBase,
    context_length: int | None,
    response_tokens: int,
) -> None:
    where = str(source.path) if source.split is None else f"{source.path} (split {source.split!r})"
    try:
        import datasets
    except ImportError:
        raise ValueError(
            f"The data {where} is a folder saved by the `datasets` library, which reading it needs: {DATASETS_INSTALL}."
        ) from None
    dataset = datasets.load_from_disk(str(source.path))
    if source.split is not None:
        dataset = dataset[source.split]
    columns = set(dataset.column_names)
    unknown = sorted(columns - PROMPT_KEYS - OPTIONAL_KEYS)
    if unknown or not columns & PROMPT_KEYS:
        found = f"has the columns {unknown}, which are not the format's" if unknown else "has no prompt column"
        raise ValueError(
            f'The dataset {where} {found}: its rows must hold "prompt" (text) or "messages" (a chat), and '
            'optionally "response". Rename a column (dataset = dataset.rename_column("text", "prompt")) or drop '
            "it (dataset.remove_columns([...])), then save_to_disk again."
        )
    for index, row in enumerate(dataset.with_format(None)):
        row = _without_none(row)
        digest = hashlib.sha256(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
        key = f"data/{source.name}/{index}@{digest.hexdigest()[:12]}"
        _read_row(data, f"{where}, row {index}", key, row, tokenizer, context_length, response_tokens)


def _without_none(row: dict) -> dict:
    """A dataset row as the JSON line it stands for: a None value is a key that line leaves out (in a message too:
    Arrow gives every message the keys any has)."""
    row = {key: value for key, value in row.items() if value is not None}
    if isinstance(row.get("messages"), list):
        row["messages"] = [
            {key: value for key, value in message.items() if value is not None}
            if isinstance(message, dict)
            else message
            for message in row["messages"]
        ]
    return row


def _read_line(
    data: UserData,
    path: Path,
    number: int,
    line: str,
    tokenizer: PreTrainedTokenizerBase,
    context_length: int | None,
    response_tokens: int,
) -> None:
    where = f"{path}, line {number}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{where} is not valid JSON ({error}): write one JSON object per line.") from None
    if not isinstance(row, dict):
        raise ValueError(f'{where} is a JSON {type(row).__name__}, not an object: write {{"prompt": "..."}}.')
    digest = hashlib.sha256(line.strip().encode()).hexdigest()[:12]
    _read_row(data, where, f"data/{path.name}/{number}@{digest}", row, tokenizer, context_length, response_tokens)


def _read_row(
    data: UserData,
    where: str,
    key: str,
    row: dict,
    tokenizer: PreTrainedTokenizerBase,
    context_length: int | None,
    response_tokens: int,
) -> None:
    unknown = sorted(set(row) - PROMPT_KEYS - OPTIONAL_KEYS)
    if unknown:
        raise ValueError(
            f'{where} has unknown keys {unknown}: a line holds "prompt" or "messages", and optionally '
            '"response"; rename or remove them.'
        )
    if len(PROMPT_KEYS & set(row)) != 1:
        raise ValueError(f'{where} must hold exactly one of "prompt" (text) and "messages" (a chat).')
    response = row.get("response")
    if response is not None and (not isinstance(response, str) or not response.strip()):
        raise ValueError(
            f'{where} has a "response" that is not a non-empty string: give the answer\'s text, or leave the key '
            "out to train on the model's own answer."
        )
    if "prompt" in row:
        if not isinstance(row["prompt"], str):
            raise ValueError(f'{where}: "prompt" must be a string (for a chat, use "messages").')
        text, special_tokens = row["prompt"], True
    else:
        text, special_tokens = _chat_text(row["messages"], where, tokenizer), False
    if not text.strip():
        _skip(data, where, "empty prompts", "its prompt is empty")
        return
    input_ids = tokenizer.encode(text, add_special_tokens=special_tokens)
    response_ids = None
    if response is not None:
        response_ids = tokenizer.encode(response, add_special_tokens=False)[:response_tokens]
    needed = len(input_ids) + (response_tokens if response_ids is None else len(response_ids))
    if context_length is not None and needed > context_length:
        _skip(
            data,
            where,
            "prompts longer than the model's context",
            f"its {len(input_ids)} prompt tokens and {needed - len(input_ids)} response tokens exceed the model's "
            f"context of {context_length} tokens (max_position_embeddings)",
        )
        return
    data.prompts.append(UserPrompt(key, input_ids, response_ids))


def _chat_text(messages, where: str, tokenizer: PreTrainedTokenizerBase) -> str:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f'{where}: "messages" must be a non-empty list of {{"role": ..., "content": ...}}.')
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or set(message) != MESSAGE_KEYS:
            raise ValueError(f'{where}: message {index} must be an object with exactly the keys "role" and "content".')
        if message["role"] not in ROLES:
            raise ValueError(
                f"{where}: message {index} has the unknown role {message['role']!r}: use one of {', '.join(ROLES)}."
            )
        if not isinstance(message["content"], str):
            raise ValueError(f'{where}: message {index}\'s "content" must be a string.')
    if messages[-1]["role"] == "assistant":
        raise ValueError(
            f'{where}: the last message is the assistant\'s: move its content to "response" (the target answer), '
            "so that the prompt ends where the answer starts."
        )
    if all(not message["content"].strip() for message in messages):
        return ""
    if tokenizer.chat_template is None:
        raise ValueError(
            f'{where} is a chat, but the tokenizer has no chat template: give the prompt as "prompt" text, or use '
            "a model whose tokenizer has one."
        )
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _skip(data: UserData, where: str, reason: str, detail: str) -> None:
    data.skipped[reason] += 1
    logger.warning(f"Skipping {where}: {detail}.")


def model_context_length(config) -> int | None:
    """The model's context (`max_position_embeddings` of its text config), None if it states none."""
    return getattr(config.get_text_config(), "max_position_embeddings", None)
