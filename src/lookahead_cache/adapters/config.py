"""The lookahead adapter's own configuration (`lookahead_config.json`), saved next to PEFT's adapter files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from peft import LoraConfig
from transformers import PretrainedConfig, PreTrainedTokenizerBase

LOOKAHEAD_CONFIG_NAME = "lookahead_config.json"
LOOKAHEAD_WEIGHTS_NAME = "lookahead_embeddings.safetensors"
# PEFT's files of the lookahead LoRA, saved next to ours.
PEFT_CONFIG_NAME = "adapter_config.json"
PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
FORMAT_VERSION = 1
# Every linear layer of a Llama-style decoder, as in the paper.
DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """SHA-256 of the tokenizer's vocabulary (token -> id), the part the lookahead adapter depends on."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


@dataclass
class BaseModelSignature:
    """What a lookahead adapter must agree on with the model it is loaded into."""

    model_type: str
    num_hidden_layers: int
    hidden_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tokenizer_sha256: str | None = None

    @classmethod
    def of(cls, config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> BaseModelSignature:
        text_config = config.get_text_config()
        return cls(
            model_type=text_config.model_type,
            num_hidden_layers=text_config.num_hidden_layers,
            hidden_size=text_config.hidden_size,
            num_attention_heads=text_config.num_attention_heads,
            num_key_value_heads=getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads,
            vocab_size=text_config.vocab_size,
            tokenizer_sha256=None if tokenizer is None else tokenizer_fingerprint(tokenizer),
        )

    def mismatches(self, other: BaseModelSignature, label: str = "adapter") -> list[str]:
        """`field: <label> value vs model value` for every field that differs (a missing tokenizer hash is no
        mismatch: it is only checked when both sides know it)."""
        out = []
        for name in (f.name for f in fields(self)):
            mine, theirs = getattr(self, name), getattr(other, name)
            if name == "tokenizer_sha256" and (mine is None or theirs is None):
                continue
            if mine != theirs:
                out.append(f"{name}: {label} {mine!r} vs model {theirs!r}")
        return out


@dataclass
class LookaheadConfig:
    """Configuration of a lookahead adapter: the lookahead tokens and the LoRA active on their rows only.

    Attributes:
        num_tokens: Learned lookahead embeddings appended after the prompt (the paper saturates at 32).
        lora_rank: Rank of the lookahead LoRA.
        lora_alpha: LoRA scaling numerator (`alpha / rank` scales the update).
        target_modules: Linear layers the LoRA adapts.
        base_model: Signature of the model it was trained for; loading into another model is refused.
        base_model_name_or_path: Where the base model came from, for the model card.
        training: The recipe it was trained with (command, data mix, steps, time, final loss), for the model card.
        format_version: Version of this file's layout.
    """

    num_tokens: int = 32
    lora_rank: int = 8
    lora_alpha: int = 32
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGET_MODULES))
    base_model: BaseModelSignature | None = None
    base_model_name_or_path: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if isinstance(self.base_model, dict):
            self.base_model = BaseModelSignature(**self.base_model)
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens={self.num_tokens} must be at least 1 lookahead token.")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank={self.lora_rank} must be at least 1.")
        if not self.target_modules:
            raise ValueError("target_modules is empty: the lookahead LoRA needs at least one linear layer to adapt.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json_file(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json_file(cls, path: str | Path) -> LookaheadConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a readable lookahead config (JSON): {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}.")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{path} has format_version {version!r}; this lookahead-cache reads version {FORMAT_VERSION}. "
                "Upgrade lookahead-cache, or re-save the adapter with this version."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path} has unknown fields {unknown}; expected a subset of {sorted(known)}.")
        return cls(**data)


# A token id no tokenizer produces: PEFT's own invocation search never activates the lookahead LoRA.
INERT_INVOCATION_TOKENS = [-1]
DEFAULT_ADAPTER_NAME = "default"


def lora_config(config: LookaheadConfig) -> LoraConfig:
    """The PEFT side of a lookahead adapter: an activated LoRA that only lookahead-cache ever activates."""
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(config.target_modules),
        alora_invocation_tokens=list(INERT_INVOCATION_TOKENS),
        task_type="CAUSAL_LM",
    )


def check_lora_config(lora: LoraConfig, source: str) -> None:
    """Refuse a PEFT config that would adapt more than the lookahead rows."""
    if getattr(lora, "alora_invocation_tokens", None) != INERT_INVOCATION_TOKENS:
        raise ValueError(
            f"{source}: its LoRA is not a lookahead LoRA "
            f"(alora_invocation_tokens={getattr(lora, 'alora_invocation_tokens', None)!r}, "
            f"expected {INERT_INVOCATION_TOKENS}): loaded as is it would adapt the prompt and the generated tokens, "
            "not only the lookahead rows. Save lookahead adapters with lookahead_cache "
            "(LookaheadAdapter.save_pretrained)."
        )
