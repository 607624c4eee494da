"""Tensor parallelism: which part of a sharded weight, and so of a layer's KV heads, this process holds.

A model loaded with transformers' `from_pretrained(..., tp_plan="auto")` under `torchrun` holds its sharded weights
as torch `DTensor`s, which say how they are split: a key projection split by rows gives each process a contiguous
block of the layer's KV heads, and the cache of each process stores those heads only. Scoring and selecting a head's
tokens need nothing from the other processes. A per-head allocation shares a layer's budget among all its heads, so
it decides on every process's scores (`lookahead_cache.eviction`); the lookahead LoRA's update of a sharded layer is
split as the layer is (`lookahead_cache.adapters.model`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class ParameterShard:
    """How tensor parallelism splits a parameter: into `count` equal blocks along its dimension `dim`; this process
    holds block `index`, the processes of `group` hold the others, in the order of their ranks in it.

    Tensors split like it (a layer's scores and token counts along its KV heads) are split and gathered with `own`
    and `gather`; products over its blocks (the LoRA's of a layer split by its inputs) are added up with `sum`.
    """

    dim: int
    index: int
    count: int
    group: dist.ProcessGroup

    @classmethod
    def of(cls, parameter: torch.Tensor, name: str) -> ParameterShard | None:
        """How `parameter` (called `name` in errors) is split among processes; None when this process holds it whole.

        Raises:
            ValueError: It is split along several dimensions of its device mesh.
        """
        if not _in_process_group():
            return None
        from torch.distributed.tensor import DTensor

        if not isinstance(parameter, DTensor):
            return None
        sharded = [
            (mesh_dim, placement) for mesh_dim, placement in enumerate(parameter.placements) if placement.is_shard()
        ]
        if not sharded:
            return None
        if len(sharded) > 1:
            raise ValueError(
                f"{name} is split along {len(sharded)} dimensions of its device mesh ({parameter.placements}); "
                "lookahead-cache reads a split along one dimension, as tensor parallelism alone makes "
                "(`from_pretrained(..., tp_plan='auto')`). Shard the model with tensor parallelism only, or use "
                "allocation='uniform' or 'pyramid' and a heuristic scorer, which need no other process's part."
            )
        mesh_dim, placement = sharded[0]
        dim = placement.dim % parameter.dim()
        mesh = parameter.device_mesh
        return cls(dim, mesh.get_local_rank(mesh_dim), mesh.size(mesh_dim), mesh.get_group(mesh_dim))

    def own(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """This process's block of `tensor`, split like the parameter along `dim`."""
        return tensor.chunk(self.count, dim)[self.index]

    def gather(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        """Every process's `tensor`, this process's block, joined along `dim` in block order."""
        blocks = [torch.empty_like(tensor) for _ in range(self.count)]
        dist.all_gather(blocks, tensor.contiguous(), group=self.group)
        return torch.cat(blocks, dim)

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum over the processes of their `tensor`, each a partial sum over its own block."""
        tensor = tensor.clone()
        dist.all_reduce(tensor, group=self.group)
        return tensor


def local_part(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """What this process holds of `tensor`: a DTensor's local block, any other tensor (or None) as it is."""
    if dist.is_available():
        from torch.distributed.tensor import DTensor

        if isinstance(tensor, DTensor):
            return tensor.to_local()
    return tensor


def kv_head_shard(attention_module: nn.Module, kv_heads: int) -> ParameterShard | None:
    """How tensor parallelism splits among processes the KV heads of `attention_module`'s layer, of which this process
    holds `kv_heads`: as the rows of its key projection. None when this process holds every head.

    Raises:
        ValueError: This process holds fewer KV heads than the model has, and its key projection does not say which.
    """
    config = attention_module.config
    model_kv_heads = getattr(config, "num_key_value_heads", None) or getattr(config, "num_attention_heads", None)
    if kv_heads == model_kv_heads:
        # Whatever the weights' split: a layer whose keys are gathered holds every head.
        return None
    weight = getattr(getattr(attention_module, "k_proj", None), "weight", None)
    shard = None if weight is None else ParameterShard.of(weight, f"{type(attention_module).__name__}.k_proj.weight")
    if shard is not None and shard.dim == 0 and (model_kv_heads is None or kv_heads * shard.count == model_kv_heads):
        return shard
    if shard is None and (not _in_process_group() or model_kv_heads is None or kv_heads > model_kv_heads):
        # One process, or a config that counts heads otherwise than the keys do: the heads held are the layer's.
        return None
    if weight is None:
        unreadable = "it has no `k_proj` weight to read the split from"
    elif shard is None:
        unreadable = "its `k_proj` weight is not a sharded torch DTensor"
    else:
        unreadable = (
            f"its `k_proj` weight is split into {shard.count} blocks along its dimension {shard.dim}, not into equal "
            "blocks of whole heads"
        )
    raise ValueError(
        f"This process holds {kv_heads} of the {model_kv_heads} KV heads of {type(attention_module).__name__}, and "
        f"lookahead-cache cannot tell which: {unreadable}. A per-head allocation would share each layer's budget "
        "among this process's heads only. Shard the model with transformers' tensor parallelism "
        "(`from_pretrained(..., tp_plan='auto')`) over a number of processes that divides its KV heads, or use "
        "allocation='uniform' or 'pyramid', which need no other process's heads."
    )


def _in_process_group() -> bool:
    return dist.is_available() and dist.is_initialized()
