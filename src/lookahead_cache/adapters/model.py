"""The lookahead adapter as a module: learned lookahead embeddings plus a LoRA that adapts their rows only.

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

import hashlib
import weakref
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from torch import nn
from torch.nn import functional as F

from ..lookahead_rows import LookaheadRows
from ..prefill import CACHE_ARGUMENT
from ..tensor_parallel import ParameterShard, local_part
from .config import DEFAULT_ADAPTER_NAME, LookaheadConfig
from .serialization import push_lookahead_to_hub, save_lookahead

# The attribute under which the modules of a model carrying a lookahead adapter hold it (see `get_lookahead`).
ADAPTER_ATTRIBUTE = "lookahead_adapter"


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
        # LU-KV profiles shipped beside it, by scorer, read once (`lookahead_cache.allocation.lukv.adapter_profile`).
        self.profiles: dict = {}

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
        return save_lookahead(self, save_directory, evaluation=evaluation)

    def push_to_hub(self, repo_id: str, **kwargs) -> str:
        """Save to a temporary folder and upload it to Hub repo `repo_id`, with the LU-KV profiles shipped with the
        adapter (those of the folder or repo it was loaded from), or those of `profiles_from=<folder>`
        (`profiles_from=False`: none); see `push_lookahead_to_hub`."""
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
            # Under tensor parallelism PEFT sizes the LoRA of a split layer to this process's block of the layer (and,
            # from PEFT 0.21 on, holds it as a DTensor). A layer split by its outputs then adds this process's block
            # of the update; one split by its inputs reads its block of them, so lora_A's columns give a partial
            # product, summed over the processes before lora_B.
            down, down_bias, up, up_bias = (
                local_part(w) for w in (lora_A.weight, lora_A.bias, lora_B.weight, lora_B.bias)
            )
            base_layer = layer.get_base_layer()
            shard = ParameterShard.of(base_layer.weight, f"{type(base_layer).__name__} weight under the lookahead LoRA")
            splits_inputs = shard is not None and shard.dim == 1

            def add_lora(module, args, output):
                lookahead_rows = args[0][..., -rows:, :].to(down.dtype)
                if dropout is not None:
                    lookahead_rows = dropout(lookahead_rows)
                # The LoRA's linear layers called as functions: called as modules, these 2 x 210 calls (SmolLM2)
                # would each also run every global module hook, such as the one a LookaheadCache watches its prefill
                # with; that was half of the LoRA's time in a short prefill on a CPU.
                low_rank = F.linear(lookahead_rows, down)
                if splits_inputs:
                    low_rank = shard.sum(low_rank)
                if down_bias is not None:
                    low_rank = low_rank + down_bias
                update = F.linear(low_rank, up, up_bias)
                output[..., -rows:, :] += (update * scaling).to(output.dtype)
                return output

            return add_lora

        handles = [layer.register_forward_hook(lora_hook(layer)) for layer in layers]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def append_to_prefill(self, decoder: nn.Module, kwargs: dict, question_ids: torch.Tensor | None = None) -> dict:
        """The decoder's keyword arguments with rows after the prompt: the tokens of `question_ids` (`[1 or batch, m]`,
        if given), then the lookahead rows; embeddings, padding mask and positions (the rows after each prompt's last
        position)."""
        input_ids, inputs_embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        embed_tokens = decoder.get_input_embeddings()
        if inputs_embeds is None:
            inputs_embeds = embed_tokens(input_ids)
        batch = inputs_embeds.shape[0]
        appended = [self.embeddings.to(inputs_embeds.dtype)[None].expand(batch, -1, -1)]
        if question_ids is not None:
            if question_ids.shape[0] not in (1, batch):
                raise ValueError(
                    f"The question (set_question) has {question_ids.shape[0]} rows for a batch of {batch} prompts: "
                    "pass one question for every prompt (`[m]` or `[1, m]`) or one per prompt (`[batch, m]`)."
                )
            question = embed_tokens(question_ids.to(inputs_embeds.device)).to(inputs_embeds.dtype)
            appended.insert(0, question.expand(batch, -1, -1))
        n = sum(rows.shape[1] for rows in appended)
        kwargs = {**kwargs, "input_ids": None, "inputs_embeds": torch.cat([inputs_embeds, *appended], dim=1)}
        attention_mask = kwargs.get("attention_mask")
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError(
                    "The lookahead scorer appends its tokens to a prompt with a 2D padding mask "
                    f"`[batch, prompt_len]`; got an attention mask of shape {tuple(attention_mask.shape)}. Pass the "
                    "tokenizer's attention_mask, or use a heuristic scorer (e.g. scorer='snapkv') with custom masks."
                )
            kwargs["attention_mask"] = torch.cat([attention_mask, attention_mask.new_ones(batch, n)], dim=-1)
        position_ids = kwargs.get("position_ids")
        if position_ids is not None:
            following = position_ids[..., -1:] + torch.arange(1, n + 1, device=position_ids.device)
            kwargs["position_ids"] = torch.cat([position_ids, following], dim=-1)
        return kwargs

    @contextmanager
    def rows_attending(self, decoder: nn.Module, question: int = 0) -> Iterator[LookaheadRows]:
        """Within the block, a forward of `decoder` whose inputs end with the lookahead rows (after `question` rows
        of a question) runs them as the cache and training both need: the lookahead LoRA on those rows only, the
        prompt rows attending as the base model does, and the rows' queries recorded per attention module (in the
        `LookaheadRows` yielded)."""
        rows = LookaheadRows(self.config.num_tokens, question=question)
        with ExitStack() as stack:
            stack.enter_context(self.lora_on_lookahead_rows(decoder))
            stack.enter_context(rows.attending(decoder))
            yield rows

    def run(
        self,
        decoder: nn.Module,
        cache,
        attention_modules: Sequence[nn.Module],
        attention_mask: torch.Tensor | None,
        start_positions: torch.Tensor,
    ) -> list[torch.Tensor]:
        """Run the lookahead tokens alone right after the prompt held by `cache`, and return their queries per layer.

        Training and evaluation replay use it on a recorded prompt; a live prefill through `LookaheadCache` runs
        the same rows, the same way (`rows_attending`), inside the prompt's own forward.

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
        with self.rows_attending(decoder) as rows:
            decoder(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **{CACHE_ARGUMENT: cache},
                use_cache=True,
            )
        missing = [i for i, module in enumerate(attention_modules) if module not in rows.queries]
        if missing:
            raise RuntimeError(f"The lookahead tokens did not reach the attention modules of layers {missing}.")
        return [rows.take_queries(module) for module in attention_modules]


def get_lookahead(model: nn.Module) -> LookaheadAdapter | None:
    """The lookahead adapter attached to `model` (a PeftModel, its base model or any module of the base model)."""
    adapter = vars(model).get(ADAPTER_ATTRIBUTE)
    if adapter is not None:
        return adapter
    get_embeddings = getattr(model, "get_input_embeddings", None)
    if get_embeddings is None:
        return None
    return vars(get_embeddings()).get(ADAPTER_ATTRIBUTE)
