"""The user's own prompts, from JSONL files, for `lookahead-cache train --data` and `profile --data`.

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


def file_digest(path: str | Path) -> str:
    """16 hex digits of the sha256 of a data file's bytes: what a resumed run checks its data against."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def read_user_data(
    paths: list[str | Path],
    tokenizer: PreTrainedTokenizerBase,
    context_length: int | None,
    response_tokens: int,
) -> UserData:
    """The prompts of the JSONL `paths` (see the module's docstring for the format and what is refused or skipped).

    Args:
        context_length: The model's context; a prompt that does not fit it with its response (the given one, or
            `response_tokens`) is skipped. None: no limit.
        response_tokens: Tokens of each target answer: a given response is cut to them.

    Raises:
        ValueError: A file is missing or passed twice, or a line can only be a mistake; the message names the file,
            the line and the fix.
    """
    data = UserData(prompts=[])
    seen = set()
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"The data file {path} does not exist: pass JSONL files of prompts to --data.")
        if path.resolve() in seen:
            raise ValueError(f"The data file {path} is passed twice: its prompts would count twice; pass it once.")
        seen.add(path.resolve())
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    _read_line(data, path, number, line, tokenizer, context_length, response_tokens)
    if not data.prompts:
        raise ValueError(
            f"The data files {', '.join(map(str, paths))} hold no usable prompt ({data.skipped_summary() or 'empty'})."
        )
    return data


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
    digest = hashlib.sha256(line.strip().encode()).hexdigest()[:12]
    data.prompts.append(UserPrompt(f"data/{path.name}/{number}@{digest}", input_ids, response_ids))


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
