"""What the files of a lookahead adapter must agree on, with each other and with the model they are loaded into.

`load_lookahead` runs these checks before PEFT touches the model. PEFT wraps a model in place, and it meets a LoRA of
another rank or a file cut short only once it has swapped the model's layers, in an error that names neither the
file nor the fix. Weights are read through safetensors only, never unpickled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from peft.utils.other import get_pattern_key
from safetensors import SafetensorError, safe_open
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .config import (
    LOOKAHEAD_CONFIG_NAME,
    LOOKAHEAD_WEIGHTS_NAME,
    PEFT_CONFIG_NAME,
    PEFT_WEIGHTS_NAME,
    BaseModelSignature,
    LookaheadConfig,
    check_lora_config,
)

# How PEFT names the LoRA weights of a causal LM's module `<module>` in adapter_model.safetensors.
_LORA_KEY = re.compile(r"base_model\.model\.(?P<module>.+)\.lora_(?P<matrix>[AB])\.weight")
_MIXED_FILES = (
    "Copy all the adapter's files from one folder written by LookaheadAdapter.save_pretrained (it saves them together)."
)


def check_adapter(
    folder: Path, base_model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase | None, source: str
) -> tuple[LookaheadConfig, LoraConfig, torch.Tensor]:
    """The lookahead config, PEFT's LoRA config and the lookahead embeddings of the adapter in `folder`, once its
    files are complete, agree with each other, and fit `base_model`; a ValueError naming the file and the fix if not.
    `source` names the adapter in messages."""
    config = LookaheadConfig.from_json_file(folder / LOOKAHEAD_CONFIG_NAME)
    if config.base_model is None:
        raise ValueError(f"{source}: {LOOKAHEAD_CONFIG_NAME} does not record the base model it was trained for.")
    model_signature = BaseModelSignature.of(base_model.config, tokenizer)
    mismatches = config.base_model.mismatches(model_signature)
    if mismatches:
        given = getattr(base_model.config, "_name_or_path", "") or model_signature.model_type
        raise ValueError(
            f"{source} was trained for another base model ({_trained_for(config)}) than the one given ({given}): "
            + "; ".join(mismatches)
        )
    lora = _read_lora_config(folder, source)
    check_lora_config(lora, source)
    _check_configs_agree(config, lora, source)
    _check_lora_weights(read_safetensors(folder / PEFT_WEIGHTS_NAME, source), lora, config, base_model, source)
    embeddings = _check_embeddings(
        read_safetensors(folder / LOOKAHEAD_WEIGHTS_NAME, source), config, base_model, source
    )
    return config, lora, embeddings


def read_safetensors(path: Path, source: str) -> dict[str, torch.Tensor]:
    """Every tensor of the safetensors file `path`, once the file is known to hold every byte its header describes.

    A copy or download cut short keeps its header, and safetensors refuses it only as "incomplete metadata, file not
    fully covered": the file's size is checked against the header's data offsets first, to say that it is truncated.
    """
    invalid = f"{source}: {path.name} is not a valid safetensors file"
    size = path.stat().st_size
    with path.open("rb") as file:
        prefix = file.read(8)
        header_size = int.from_bytes(prefix, "little")
        if len(prefix) < 8 or header_size > size - 8:
            raise ValueError(f"{invalid}: it is truncated ({size} bytes, less than its header). Copy it again.")
        try:
            header = json.loads(file.read(header_size))
            data_size = max(
                (entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0
            )
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            raise ValueError(f"{invalid}: its header is unreadable ({error!r}). {_MIXED_FILES}") from error
    expected = 8 + header_size + data_size
    if size < expected:
        raise ValueError(
            f"{invalid}: it is truncated ({size} bytes; its header describes {expected}). Copy or download it again."
        )
    try:
        with safe_open(str(path), framework="pt") as weights:
            return {key: weights.get_tensor(key) for key in weights.keys()}  # noqa: SIM118 (safe_open is no dict)
    except SafetensorError as error:
        raise ValueError(f"{invalid} ({error}). {_MIXED_FILES}") from error


def _read_lora_config(folder: Path, source: str) -> LoraConfig:
    try:
        return LoraConfig.from_pretrained(str(folder))
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{source}: {PEFT_CONFIG_NAME} is not a readable PEFT LoRA config ({error}).") from error


def _check_configs_agree(config: LookaheadConfig, lora: LoraConfig, source: str) -> None:
    targets = lora.target_modules if isinstance(lora.target_modules, str) else sorted(lora.target_modules or ())
    differences = [
        f"{ours} {mine!r} vs {theirs} {peft!r}"
        for ours, mine, theirs, peft in (
            ("lora_rank", config.lora_rank, "r", lora.r),
            ("lora_alpha", config.lora_alpha, "lora_alpha", lora.lora_alpha),
            ("target_modules", sorted(config.target_modules), "target_modules", targets),
        )
        if mine != peft
    ]
    if differences:
        raise ValueError(
            f"{source}: {LOOKAHEAD_CONFIG_NAME} and {PEFT_CONFIG_NAME} disagree ({'; '.join(differences)}): they come "
            f"from different adapters. {_MIXED_FILES}"
        )


def _check_lora_weights(
    tensors: dict[str, torch.Tensor],
    lora: LoraConfig,
    config: LookaheadConfig,
    base_model: PreTrainedModel,
    source: str,
) -> None:
    """The weights PEFT would load: a lora_A and lora_B of the configured rank for exactly the modules of `base_model`
    that the LoRA config targets (PEFT's own matching), shaped for those modules."""
    _check_values(tensors, PEFT_WEIGHTS_NAME, source)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, tensor in tensors.items():
        match = _LORA_KEY.fullmatch(key)
        if match is None:
            unexpected.append(key)
        else:
            pairs.setdefault(match["module"], {})[match["matrix"]] = tensor
    if unexpected:
        raise ValueError(
            f"{source}: {PEFT_WEIGHTS_NAME} holds tensors other than lora_A and lora_B weights ({_some(unexpected)}), "
            f"which a lookahead LoRA does not have. {_MIXED_FILES}"
        )
    modules = dict(base_model.named_modules())
    absent = sorted(name for name in pairs if name not in modules)
    if absent:
        raise ValueError(
            f"{source}: {PEFT_WEIGHTS_NAME} holds LoRA weights for {len(absent)} modules this model does not have "
            f"({_some(absent)}): the adapter was trained for another model. {_load_into(config)}"
        )
    targeted = {name for name in modules if name and check_target_module_exists(lora, name)}
    untargeted = sorted(name for name in pairs if name not in targeted)
    if untargeted:
        raise ValueError(
            f"{source}: {PEFT_WEIGHTS_NAME} holds LoRA weights for modules that {PEFT_CONFIG_NAME} does not target "
            f"({_some(untargeted)}): the two files come from different adapters. {_MIXED_FILES}"
        )
    missing = sorted(name for name in targeted if set(pairs.get(name, ())) != {"A", "B"})
    if missing:
        raise ValueError(
            f"{source}: {PEFT_WEIGHTS_NAME} lacks LoRA weights for {len(missing)} of the {len(targeted)} modules that "
            f"{PEFT_CONFIG_NAME} targets in this model ({_some(missing)}): the file is incomplete, or the adapter was "
            f"trained for a model with other modules. {_load_into(config)}"
        )
    for name, pair in sorted(pairs.items()):
        shape_a, shape_b = tuple(pair["A"].shape), tuple(pair["B"].shape)
        if len(shape_a) != 2 or len(shape_b) != 2 or shape_a[0] != shape_b[1]:
            raise ValueError(
                f"{source}: {PEFT_WEIGHTS_NAME} holds LoRA weights for {name} of shapes lora_A {shape_a}, lora_B "
                f"{shape_b}, which are no pair of LoRA matrices. {_MIXED_FILES}"
            )
        layer = modules[name]
        features = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
        if None not in features and features != (shape_a[1], shape_b[0]):
            raise ValueError(
                f"{source}: the adapter was trained for a model with other layer sizes: its LoRA for {name} maps "
                f"{shape_a[1]} to {shape_b[0]} features; this model's {name} maps {features[0]} to {features[1]}. "
                + _load_into(config)
            )
        rank = lora.rank_pattern.get(get_pattern_key(lora.rank_pattern.keys(), name), lora.r)
        if shape_a[0] != rank:
            raise ValueError(
                f"{source}: LoRA rank r={rank} in {PEFT_CONFIG_NAME} but {PEFT_WEIGHTS_NAME} holds rank-{shape_a[0]} "
                f"weights (lora_A of {name}: {shape_a}): the two files come from different adapters. {_MIXED_FILES}"
            )


def _check_embeddings(
    tensors: dict[str, torch.Tensor], config: LookaheadConfig, base_model: PreTrainedModel, source: str
) -> torch.Tensor:
    if set(tensors) != {"embeddings"}:
        raise ValueError(
            f"{source}: {LOOKAHEAD_WEIGHTS_NAME} must hold exactly one tensor named 'embeddings', found "
            f"{sorted(tensors)}."
        )
    embeddings = tensors["embeddings"]
    shape, hidden_size = tuple(embeddings.shape), base_model.get_input_embeddings().weight.shape[-1]
    expected = (config.num_tokens, hidden_size)
    if shape != expected:
        if len(shape) == 2 and shape[1] != hidden_size:
            why = (
                f"the adapter was trained for a model with hidden size {shape[1]}; this model has {hidden_size}. "
                + _load_into(config)
            )
        else:
            why = (
                f"{LOOKAHEAD_CONFIG_NAME} has num_tokens={config.num_tokens}, so the files come from different "
                f"adapters. {_MIXED_FILES}"
            )
        raise ValueError(
            f"{source}: {LOOKAHEAD_WEIGHTS_NAME} holds embeddings of shape {shape}, expected {expected} "
            f"(num_tokens x hidden size): {why}"
        )
    _check_values(tensors, LOOKAHEAD_WEIGHTS_NAME, source)
    return embeddings


def _check_values(tensors: dict[str, torch.Tensor], file_name: str, source: str) -> None:
    corrupted = sorted(
        key for key, tensor in tensors.items() if not tensor.is_floating_point() or not torch.isfinite(tensor).all()
    )
    if corrupted:
        raise ValueError(
            f"{source}: {file_name} holds non-finite or non-float values ({_some(corrupted)}); the file is corrupted. "
            "Copy or download it again."
        )


def _trained_for(config: LookaheadConfig) -> str:
    return config.base_model_name_or_path or config.base_model.model_type


def _load_into(config: LookaheadConfig) -> str:
    return f"Load it into the model it was trained for ({_trained_for(config)}), or train an adapter for this model."


def _some(names: list[str], shown: int = 3) -> str:
    """The first `shown` of `names`, and how many there are in all if more."""
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
