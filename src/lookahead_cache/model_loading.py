"""The model that `train` and `profile` work on: the embedded default, a local folder or a Hub model id, in the
dtype asked for."""

from __future__ import annotations

import torch
from huggingface_hub.errors import HFValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .adapters import load_lookahead
from .commands.eval import DEFAULT_MODEL
from .default_model import DEFAULT_ADAPTER_DIR, load_default_model


def load_model(
    name: str, dtype: str = "float32", adapter: str | None = None, revision: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model `name` (`DEFAULT_MODEL`, a local folder or a Hub id, read through `from_pretrained`) in `dtype`
    (`float32`, `bfloat16` or `float16`), in eval mode, with its lookahead adapter when `adapter` is given (a folder
    or Hub repo; `DEFAULT_MODEL`: the one shipped for the default model). `revision` pins a Hub model's branch, tag
    or commit."""
    torch_dtype = getattr(torch, dtype)
    if name == DEFAULT_MODEL:
        if revision is not None:
            raise ValueError(f"--revision {revision} names a Hub revision; the '{DEFAULT_MODEL}' model is embedded.")
        model, tokenizer = load_default_model(dtype=torch_dtype)
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
            # safetensors only: a pickled checkpoint from a Hub repo could run code when loaded.
            model = AutoModelForCausalLM.from_pretrained(
                name, revision=revision, dtype=torch_dtype, attn_implementation="sdpa", use_safetensors=True
            ).eval()
        except (OSError, HFValidationError) as error:
            raise ValueError(
                f"--model {name!r} is neither '{DEFAULT_MODEL}', a local model folder nor a Hub model id that loads "
                f"({type(error).__name__}: {error}). Pass a folder holding config.json and safetensors weights, or a "
                "Hub id (`org/name`; log in with `hf auth login` for a gated or private one)."
            ) from error
    if adapter is not None:
        model = load_lookahead(model, DEFAULT_ADAPTER_DIR if adapter == DEFAULT_MODEL else adapter, tokenizer=tokenizer)
    return model, tokenizer
