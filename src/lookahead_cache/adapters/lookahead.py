"""The lookahead modules: learned lookahead embeddings plus a LoRA that adapts their rows only.

The LoRA is a standard PEFT LoRA in its activated-LoRA form (`alora_invocation_tokens`), so PEFT loads and saves
it, and a model that carries it computes exactly what the base model computes: PEFT only applies an aLoRA update to
the last `alora_offsets[i]` rows of an input, and the invocation sequence that would set them is a token id that no
tokenizer produces. lookahead-cache keeps the LoRA layers switched off and, for the one prefill that carries the
lookahead rows, adds their LoRA update itself in a hook: what PEFT's aLoRA computes with offsets on those rows.

A prefill through a `LookaheadCache` with the lookahead scorer carries them: hooks on the model's decoder append
the lookahead embeddings after the prompt (the prompt rows, earlier in causal order, cannot see them), and take
their rows off the decoder's output, so the first generated token still comes from the last prompt position.

PEFT has no place for the embeddings (trainable tokens would change real tokens' embeddings), so they live in a
small module of ours, saved next to PEFT's files and attached to the model it was loaded into.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
import weakref
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel

from ..prefill import CACHE_ARGUMENT, attention_queries, cache_argument
from .config import BaseModelSignature, LookaheadConfig

# A token id no tokenizer produces: PEFT's own invocation search never activates the lookahead LoRA.
INERT_INVOCATION_TOKENS = [-1]
DEFAULT_ADAPTER_NAME = "default"

# Lookahead modules by the input embedding module of the model they belong to: the cache meets the model through
# its decoder and attention modules, and both share that module with the PeftModel users hold.
_ATTACHED: weakref.WeakKeyDictionary[nn.Module, LookaheadAdapter] = weakref.WeakKeyDictionary()


class LookaheadAdapter(nn.Module):
    """The lookahead embeddings of a model whose lookahead LoRA PEFT holds under `adapter_name`.

    Use :func:`add_lookahead` (new, for training) or :func:`lookahead_cache.load_lookahead` (trained) to get one;
    `save_pretrained` / `push_to_hub` write the PEFT files, the embeddings and a model card together.
    """

    def __init__(self, config: LookaheadConfig, model: PeftModel, adapter_name: str = DEFAULT_ADAPTER_NAME):
        super().__init__()
        self.config = config
        self.adapter_name = adapter_name
        base = model.get_base_model()
        embedding = base.get_input_embeddings()
        weight = embedding.weight
        self.embeddings = nn.Parameter(
            torch.empty(config.num_tokens, weight.shape[-1], dtype=weight.dtype, device=weight.device)
        )
        with torch.no_grad():
            # Random rows at the scale of the real token embeddings, as the paper initialises them.
            self.embeddings.normal_(0.0, float(weight.float().std()))
        self._model = weakref.ref(model)
        # Where it was loaded from (a local folder or Hub repo id, and revision), for files shipped beside it.
        self.source: str | None = None
        self.source_revision: str | None = None

    @property
    def model(self) -> PeftModel:
        model = self._model()
        if model is None:
            raise RuntimeError("The PeftModel this lookahead adapter belongs to no longer exists.")
        return model

    def save_pretrained(self, save_directory, evaluation: str | None = None):
        """Write `adapter_config.json` + `adapter_model.safetensors` (PEFT), `lookahead_config.json` +
        `lookahead_embeddings.safetensors` (ours) and a model card `README.md` (with `evaluation`, a markdown
        table, if given) to `save_directory`."""
        from .hub import save_lookahead

        return save_lookahead(self, save_directory, evaluation=evaluation)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Save to a temporary folder and upload it to Hub repo `repo_id`; see `push_lookahead_to_hub`."""
        from .hub import push_lookahead_to_hub

        return push_lookahead_to_hub(self, repo_id, **kwargs)

    def fingerprint(self) -> str:
        """sha256 of the trained parameters (embeddings and lookahead LoRA weights): what anything derived from
        this adapter's scores (an LU-KV profile, cached tables) records, to tell it apart from another adapter's."""
        digest = hashlib.sha256(self.embeddings.detach().float().cpu().numpy().tobytes())
        for layer in self.lora_layers(self.model):
            for weights in (layer.lora_A, layer.lora_B):
                digest.update(weights[self.adapter_name].weight.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()

    def lora_layers(self, module: nn.Module) -> list[LoraLayer]:
        """The LoRA layers under `module` that hold this adapter's lookahead LoRA."""
        return [m for m in module.modules() if isinstance(m, LoraLayer) and self.adapter_name in m.lora_A]

    @contextmanager
    def lora_on_lookahead_rows(self, module: nn.Module) -> Iterator[None]:
        """Within the block, forwards through `module` apply the lookahead LoRA to the last `num_tokens` rows of
        each input (every row of an input of the lookahead rows alone).

        The LoRA layers themselves stay switched off (their base layer alone runs); a forward hook on each adds the
        LoRA update of the lookahead rows, which are the same last rows in every sequence of a batch. That is what
        PEFT's aLoRA computes with offsets of `num_tokens`, minus its row mask: a slice instead of boolean indexing,
        so no host sync per layer on a GPU.
        """
        layers = self.lora_layers(module)
        if not layers:
            raise ValueError(
                f"The model has no LoRA layers for adapter {self.adapter_name!r}: the lookahead LoRA is missing. Load "
                "the adapter with lookahead_cache.load_lookahead(base_model, repo_or_dir)."
            )
        rows, name = self.config.num_tokens, self.adapter_name

        def lora_hook(layer: LoraLayer):
            lora_A, lora_B, dropout, scaling = (
                layer.lora_A[name],
                layer.lora_B[name],
                layer.lora_dropout[name],
                layer.scaling[name],
            )
            dropout = None if isinstance(dropout, nn.Identity) else dropout

            def add_lora(module, args, output):
                lookahead_rows = args[0][..., -rows:, :].to(lora_A.weight.dtype)
                if dropout is not None:
                    lookahead_rows = dropout(lookahead_rows)
                # The LoRA's linear layers called as functions: called as modules, these 2 x 210 calls (SmolLM2)
                # would each also run every global module hook, such as the one a LookaheadCache watches its prefill
                # with; that was half of the LoRA's time in a short prefill on a CPU.
                update = F.linear(F.linear(lookahead_rows, lora_A.weight, lora_A.bias), lora_B.weight, lora_B.bias)
                output[..., -rows:, :] += (update * scaling).to(output.dtype)
                return output

            return add_lora

        handles = [layer.register_forward_hook(lora_hook(layer)) for layer in layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def append_to_prefill(self, decoder: nn.Module, kwargs: dict) -> dict:
        """The decoder's keyword arguments with the lookahead rows after the prompt: embeddings, padding mask
        and positions (the row after each prompt's last position)."""
        input_ids, inputs_embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = decoder.get_input_embeddings()(input_ids)
        batch, n = inputs_embeds.shape[0], self.config.num_tokens
        lookahead = self.embeddings.to(inputs_embeds.dtype)[None].expand(batch, -1, -1)
        kwargs = {**kwargs, "input_ids": None, "inputs_embeds": torch.cat([inputs_embeds, lookahead], dim=1)}
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError(
                    f"The lookahead scorer appends its tokens to a prompt with a 2D padding mask `[batch, prompt_len]`; "
                    f"got an attention mask of shape {tuple(attention_mask.shape)}. Pass the tokenizer's "
                    "attention_mask, or use a heuristic scorer (e.g. scorer='snapkv') with custom masks."
                )
            kwargs["attention_mask"] = torch.cat([attention_mask, attention_mask.new_ones(batch, n)], dim=-1)
        position_ids = kwargs.get("position_ids")
        if position_ids is not None:
            following = position_ids[..., -1:] + torch.arange(1, n + 1, device=position_ids.device)
            kwargs["position_ids"] = torch.cat([position_ids, following], dim=-1)
        return kwargs

    def run(
        self,
        decoder: nn.Module,
        cache,
        attention_modules: Sequence[nn.Module],
        attention_mask: torch.Tensor | None,
        start_positions: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Run the lookahead tokens right after the prompt held by `cache`, and return their queries per layer.

        Training and evaluation replay use it on a recorded prompt; a live prefill through `LookaheadCache` runs
        the same rows inside the prompt's own forward instead.

        Args:
            decoder: The transformers decoder (e.g. `LlamaModel`) that holds the attention modules.
            cache: The prompt's cache; the lookahead tokens' keys and values are appended to it (callers drop them).
            attention_modules: The attention module of each layer, in layer order.
            attention_mask: `[batch, prompt_len]` 2D padding mask of the prompt, or None without padding.
            start_positions: `[batch]` position of each row's first lookahead token (its number of real tokens).

        Returns:
            Per layer, post-RoPE queries `[batch, q_heads, num_tokens, head_dim]` of the lookahead tokens; they
            carry gradients to the embeddings and the LoRA when grad is enabled.
        """
        batch = start_positions.shape[0]
        n = self.config.num_tokens
        embedding_weight = decoder.get_input_embeddings().weight
        inputs_embeds = self.embeddings.to(embedding_weight.dtype)[None].expand(batch, -1, -1)
        position_ids = start_positions[:, None].to(embedding_weight.device) + torch.arange(
            n, device=embedding_weight.device
        )
        if attention_mask is not None:
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, n)], dim=-1)
        queries: dict[int, torch.Tensor] = {}

        def capture(layer_idx: int):
            def hook(module, args, kwargs):
                hidden_states = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
                head_dim = (
                    getattr(module, "head_dim", None) or module.config.hidden_size // module.config.num_attention_heads
                )
                queries[layer_idx] = attention_queries(
                    module, hidden_states, kwargs.get("position_embeddings"), head_dim, layer_idx
                )

            return hook

        handles = [
            module.register_forward_pre_hook(capture(layer_idx), with_kwargs=True)
            for layer_idx, module in enumerate(attention_modules)
        ]
        try:
            with self.lora_on_lookahead_rows(decoder):
                decoder(
                    inputs_embeds=inputs_embeds,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    **{CACHE_ARGUMENT: cache},
                    use_cache=True,
                )
        finally:
            for handle in handles:
                handle.remove()
        missing = [i for i in range(len(attention_modules)) if i not in queries]
        if missing:
            raise RuntimeError(f"The lookahead tokens did not reach the attention modules of layers {missing}.")
        return [queries[i] for i in range(len(attention_modules))]


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
            f"{source}: its LoRA is not a lookahead LoRA (alora_invocation_tokens={getattr(lora, 'alora_invocation_tokens', None)!r}, "
            f"expected {INERT_INVOCATION_TOKENS}): loaded as is it would adapt the prompt and the generated tokens, "
            "not only the lookahead rows. Save lookahead adapters with lookahead_cache (LookaheadAdapter.save_pretrained)."
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
    registries = [
        (registry, {module: registry.get(module) for module, _, _ in saved}) for registry in (_ATTACHED, _PREFILL_HOOKS)
    ]
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
        for registry, before in registries:
            for module, value in before.items():
                if value is None:
                    registry.pop(module, None)
                else:
                    registry[module] = value
        raise


def add_lookahead(
    model: PreTrainedModel, config: LookaheadConfig | None = None, adapter_name: str = DEFAULT_ADAPTER_NAME
) -> PeftModel:
    """Wrap `model` in a PeftModel with a new, untrained lookahead adapter (for training).

    The LoRA starts as a no-op (PEFT initialises its B matrices to zero); the embeddings start random. If wrapping
    fails, `model` is left as it was.
    """
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
    # Keyed by every module of the base model, so that a cache that only sees an attention module finds it too.
    for module in base.modules():
        _ATTACHED[module] = adapter
    decoder = base.get_decoder()
    if decoder not in _PREFILL_HOOKS:
        _PREFILL_HOOKS[decoder] = _register_prefill_hooks(decoder)


# The hooks that carry the lookahead rows through a prefill, by decoder: registered once, whichever adapter is attached.
_PREFILL_HOOKS: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def _register_prefill_hooks(decoder: nn.Module) -> tuple:
    """Hooks on `decoder` that append the lookahead rows to a prefill whose `LookaheadCache` asks for them, apply
    the lookahead LoRA to those rows and keep the prompt rows' attention apart from theirs during it, and take the
    rows off the decoder's output."""
    running: list[tuple[object, int, ExitStack]] = []

    def append_rows(decoder, args, kwargs):
        from ..attention import LOOKAHEAD_PREFILL, SUPPORTED_ATTENTION
        from ..cache import LookaheadCache

        cache = cache_argument(kwargs)
        adapter = get_lookahead(decoder)
        if adapter is None or not (isinstance(cache, LookaheadCache) and cache.wants_lookahead_rows):
            return None
        if args:
            raise ValueError(
                f"{type(decoder).__name__} was called with positional arguments; the lookahead scorer needs its inputs "
                "as keyword arguments (input_ids=..., attention_mask=...), as transformers models pass them."
            )
        lengths = _prompt_lengths(kwargs)
        if lengths is not None and cache.cache_config.keeps_whole(lengths):
            # The cache keeps such prompts whole without scoring them: the prefill is the plain prompt's.
            cache.receive_lookahead_rows(0)
            return None
        kwargs = adapter.append_to_prefill(decoder, kwargs)
        during_prefill = ExitStack()
        during_prefill.enter_context(adapter.lora_on_lookahead_rows(decoder))
        implementation = decoder.config._attn_implementation
        if implementation in SUPPORTED_ATTENTION:
            # Keeps the prompt rows' attention bit for bit the base model's (see lookahead_cache.attention).
            during_prefill.callback(setattr, decoder.config, "_attn_implementation", implementation)
            decoder.config._attn_implementation = LOOKAHEAD_PREFILL + implementation
        cache.receive_lookahead_rows(adapter.config.num_tokens)
        running.append((cache, adapter.config.num_tokens, during_prefill))
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


def get_lookahead(model: nn.Module) -> LookaheadAdapter | None:
    """The lookahead adapter attached to `model` (a PeftModel, its base model or any module of the base model)."""
    if model in _ATTACHED:
        return _ATTACHED[model]
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if get_embeddings is None:
        return None
    return _ATTACHED.get(get_embeddings())
