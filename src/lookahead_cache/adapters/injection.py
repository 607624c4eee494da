"""Putting a lookahead adapter into a model: a new one (`add_lookahead`) or a trained one (`load_lookahead`).

PEFT wraps the model and holds the lookahead LoRA; the adapter's embeddings are attached to the model's modules
(`get_lookahead` finds them from any of them), and two hooks on the model's decoder carry the lookahead rows through
the prefill of a `LookaheadCache` that asks for them.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import peft
import torch
from packaging import version
from peft import PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..cache import LookaheadCache
from ..lookahead_rows import LookaheadRows
from ..prefill import cache_argument
from .checks import check_adapter
from .config import DEFAULT_ADAPTER_NAME, BaseModelSignature, LookaheadConfig, lora_config
from .model import ADAPTER_ATTRIBUTE, LookaheadAdapter, get_lookahead
from .serialization import resolve_adapter_files

# The attribute under which a decoder holds the hooks of `_register_prefill_hooks` (registered once per decoder).
PREFILL_HOOKS_ATTRIBUTE = "lookahead_prefill_hooks"
# The oldest PEFT tested to put a LoRA into a tensor-parallel model: 0.18 sizes the LoRA of a split layer to this
# process's block of it, then fails to load a saved LoRA's whole weights into it.
PEFT_FOR_TENSOR_PARALLEL = "0.21"


def load_lookahead(
    base_model: PreTrainedModel,
    repo_or_dir: str | Path,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    adapter_name: str = DEFAULT_ADAPTER_NAME,
    is_trainable: bool = False,
) -> PeftModel:
    """Load a trained lookahead adapter into `base_model`, so that `LookaheadCache(scorer="lookahead")` works.

    PEFT loads the lookahead LoRA (`PeftModel.from_pretrained`); the lookahead embeddings and config come from our
    sidecar files in the same folder or repo. Only safetensors files are read. Every file is checked against the
    others and against `base_model` before PEFT wraps it; if loading fails all the same, `base_model` is left as it
    was.

    Args:
        base_model: The transformers model the adapter was trained for.
        repo_or_dir: A local folder, or a Hub repo id 'owner/name' (a local folder of that name wins).
        revision: Branch, tag or commit of a Hub repo.
        token: Hub token, as in `huggingface_hub`.
        tokenizer: If given, its vocabulary must match the one the adapter was trained with.
        adapter_name: PEFT adapter name.
        is_trainable: Load the LoRA and embeddings with gradients enabled (to continue training).

    Returns:
        The `PeftModel` wrapping `base_model`. A plain `generate` on it behaves exactly like `base_model`.

    Raises:
        FileNotFoundError: No such local folder or Hub repo, a file of the adapter is missing, or (offline mode) the
            repo is not in the local Hugging Face cache.
        ValueError: A file is corrupted or truncated, the files disagree, the adapter does not fit `base_model`, or
            `base_model` is split by tensor parallelism and the installed PEFT cannot put a LoRA into it.
    """
    check_peft_fits(base_model)
    folder = resolve_adapter_files(repo_or_dir, revision=revision, token=token)
    source = f"lookahead adapter {str(repo_or_dir)!r}"
    config, lora, embeddings = check_adapter(folder, base_model, tokenizer, source)
    with unchanged_on_failure(base_model), peft_wrapping():
        peft_model = PeftModel.from_pretrained(
            base_model, str(folder), adapter_name=adapter_name, is_trainable=is_trainable, config=lora
        )
        adapter = LookaheadAdapter(config, peft_model, adapter_name)
        with torch.no_grad():
            adapter.embeddings.copy_(embeddings)
        adapter.embeddings.requires_grad_(is_trainable)
        adapter.source, adapter.source_revision = str(repo_or_dir), revision
        attach_lookahead(peft_model, adapter)
    return peft_model


def check_peft_fits(model: nn.Module) -> None:
    """Refuse a model split by tensor parallelism when the installed PEFT cannot put a LoRA into it."""
    tp_size = getattr(model, "tp_size", None) or 1
    if tp_size > 1 and version.parse(peft.__version__) < version.parse(PEFT_FOR_TENSOR_PARALLEL):
        raise ValueError(
            f"This model is split over {tp_size} processes by tensor parallelism, and PEFT {peft.__version__} cannot "
            "put the lookahead LoRA into it: it holds the LoRA of a split layer as a plain tensor of this process's "
            "block, which a saved LoRA's whole weights do not load into and which no process keeps in step with the "
            f"others. Install peft>={PEFT_FOR_TENSOR_PARALLEL} (`pip install -U peft`), or load the model in one "
            "process."
        )


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around PEFT wrapping a model: PEFT (0.21) reads `model.is_gradient_checkpointing`, which transformers 5.25
    deprecated with a FutureWarning that only PEFT can act on; users of this library would see it at every load."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


@contextmanager
def unchanged_on_failure(model: nn.Module) -> Iterator[None]:
    """If the block raises (anything, an interrupt included), put `model` back as it came in: its module tree,
    attributes, hooks, which parameters train, and the lookahead adapter attached to it, if any.

    PEFT wraps a model in place: it swaps linear layers for LoRA layers, adds attributes and freezes parameters, so a
    wrapping that fails half-way would hand the caller a model that is neither the base model nor a working adapter.
    A module keeps all of that in its `__dict__` (children, parameters, buffers and hooks in containers there), so
    shallow copies of each module's `__dict__` and of the containers in it restore it. Weights are not copied: PEFT
    does not write the base model's weights when it adds or loads an adapter.
    """
    saved = []
    for module in model.modules():
        attributes = dict(vars(module))
        containers = {
            name: copy.copy(value) for name, value in attributes.items() if isinstance(value, (dict, list, set))
        }
        saved.append((module, attributes, containers))
    requires_grad = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    try:
        yield
    except BaseException:
        for module, attributes, containers in saved:
            state = vars(module)
            for name in set(state) - set(attributes):
                del state[name]
            state.update(attributes)
            for name, content in containers.items():
                if isinstance(content, list):
                    attributes[name][:] = content
                else:
                    attributes[name].clear()
                    attributes[name].update(content)
        for parameter, flag in requires_grad:
            parameter.requires_grad_(flag)
        raise


def add_lookahead(
    model: PreTrainedModel, config: LookaheadConfig | None = None, adapter_name: str = DEFAULT_ADAPTER_NAME
) -> PeftModel:
    """Wrap `model` in a PeftModel with a new, untrained lookahead adapter (for training).

    The LoRA starts as a no-op (PEFT initialises its B matrices to zero); the embeddings start random. If wrapping
    fails, `model` is left as it was.
    """
    check_peft_fits(model)
    config = config or LookaheadConfig()
    if config.base_model is None:
        config.base_model = BaseModelSignature.of(model.config)
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = getattr(model.config, "_name_or_path", None) or None
    with unchanged_on_failure(model), peft_wrapping():
        peft_model = get_peft_model(model, lora_config(config), adapter_name=adapter_name)
        attach_lookahead(peft_model, LookaheadAdapter(config, peft_model, adapter_name))
    return peft_model


def _switch_off_lora(layers: Sequence[LoraLayer]) -> None:
    """Switch the LoRA of `layers` off, leaving which of their weights train as it was (PEFT's switch clears it)."""
    for layer in layers:
        trainable = [(weight, weight.requires_grad) for weight in layer.parameters()]
        layer.enable_adapters(False)
        for weight, requires_grad in trainable:
            weight.requires_grad_(requires_grad)


def attach_lookahead(model: PeftModel, adapter: LookaheadAdapter) -> None:
    base = model.get_base_model()
    # Off for good: `lora_on_lookahead_rows` adds the LoRA of the lookahead rows itself. An enabled aLoRA layer with
    # nothing to adapt still builds a row mask and runs the LoRA on its empty selection: 3x the ops of a decoding
    # step and, on a GPU, a host sync per layer.
    _switch_off_lora(adapter.lora_layers(base))
    # On every module of the base model, so that code that only meets an attention module finds it too. A plain
    # attribute, not a submodule: the adapter's parameters are not the base model's.
    for module in base.modules():
        vars(module)[ADAPTER_ATTRIBUTE] = adapter
    decoder = base.get_decoder()
    if PREFILL_HOOKS_ATTRIBUTE not in vars(decoder):
        vars(decoder)[PREFILL_HOOKS_ATTRIBUTE] = _register_prefill_hooks(decoder)


def _register_prefill_hooks(decoder: nn.Module) -> tuple:
    """Hooks on `decoder` that append the lookahead rows (after the cache's question, in a streaming chunk that
    carries one) to a prefill whose `LookaheadCache` asks for them, apply the lookahead LoRA to those rows and keep
    the prompt rows' attention apart from theirs during it, and take the rows off the decoder's output."""
    running: list[tuple[object, int, ExitStack]] = []

    def append_rows(decoder, args, kwargs):
        cache = cache_argument(kwargs)
        adapter = get_lookahead(decoder)
        inputs = kwargs.get("input_ids")
        inputs = kwargs.get("inputs_embeds") if inputs is None else inputs
        new_tokens = 1 if inputs is None else inputs.shape[1]
        if adapter is None or not (isinstance(cache, LookaheadCache) and cache.wants_lookahead_rows(new_tokens)):
            return None
        if args:
            raise ValueError(
                f"{type(decoder).__name__} was called with positional arguments; the lookahead scorer needs its inputs "
                "as keyword arguments (input_ids=..., attention_mask=...), as transformers models pass them."
            )
        lengths = _prompt_lengths(kwargs)
        if lengths is not None and cache.keeps_prefill_whole(lengths, new_tokens):
            # The cache keeps such prompts whole without scoring them: the prefill is the plain prompt's.
            cache.receive_lookahead_rows(LookaheadRows(0))
            return None
        question_ids = cache.question_for_prefill()
        kwargs = adapter.append_to_prefill(decoder, kwargs, question_ids)
        during_prefill = ExitStack()
        question = 0 if question_ids is None else question_ids.shape[-1]
        rows = during_prefill.enter_context(adapter.rows_attending(decoder, question))
        cache.receive_lookahead_rows(rows)
        running.append((cache, rows.appended, during_prefill))
        return args, kwargs

    def remove_rows(decoder, args, kwargs, output):
        if not running or running[-1][0] is not cache_argument(kwargs):
            return None
        _, n, during_prefill = running.pop()
        during_prefill.close()
        if output is None:  # the forward raised; the LoRA is off and the attention restored all the same
            return None
        output.last_hidden_state = output.last_hidden_state[:, :-n]
        if getattr(output, "hidden_states", None) is not None:
            output.hidden_states = tuple(hidden[:, :-n] for hidden in output.hidden_states)
        if getattr(output, "attentions", None) is not None:
            output.attentions = tuple(weights[..., :-n, :-n] for weights in output.attentions)
        return output

    return (
        decoder.register_forward_pre_hook(append_rows, with_kwargs=True),
        decoder.register_forward_hook(remove_rows, with_kwargs=True, always_call=True),
    )


def _prompt_lengths(kwargs: dict) -> list[int] | None:
    """Real tokens of each prompt of a decoder call, from its 2D padding mask or its input's length; None when the
    mask is of another kind (`append_to_prefill` refuses those)."""
    attention_mask = kwargs.get("attention_mask")
    if attention_mask is not None:
        return attention_mask.sum(-1).tolist() if attention_mask.dim() == 2 else None
    inputs = kwargs.get("input_ids")
    if inputs is None:
        inputs = kwargs["inputs_embeds"]
    return [inputs.shape[1]] * inputs.shape[0]
