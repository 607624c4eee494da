"""A model placed over several devices (`device_map`): each layer's cache lives on the device its layer runs on.

It needs a CUDA device, so it is skipped elsewhere; `scripts/gpu_check.sh` runs it on a lent GPU. With two GPUs the
layers run on both; with one, accelerate runs the layers the map puts on the CPU on the GPU (their weights stay on
the CPU and come over for each forward), so the caches follow the GPU there.
"""

import pytest
import torch
from conftest import prompt_ids, tiny_model
from transformers import AutoModelForCausalLM

from lookahead_cache import LookaheadCache
from lookahead_cache.prefill import CACHE_ARGUMENT

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device beside the CPU (scripts/gpu_check.sh runs it)"
)


def placed_tensors(layer) -> list[torch.Tensor]:
    return [value for value in vars(layer).values() if isinstance(value, torch.Tensor)]


def execution_device(module) -> torch.device:
    """Where accelerate runs `module`: the execution device of its hook (one of a SequentialHook's), else where its
    weights are."""
    hook = getattr(module, "_hf_hook", None)
    for part in getattr(hook, "hooks", [hook]):
        device = getattr(part, "execution_device", None)
        if device is not None:
            return torch.device(f"cuda:{device}" if isinstance(device, int) else device)
    return next(module.parameters()).device


@pytest.mark.parametrize("allocation", ["uniform", "adakv"])  # padded and packed storage
def test_each_layer_keeps_its_cache_on_its_layers_device(tmp_path, allocation):
    torch.backends.cuda.matmul.allow_tf32 = False
    tiny_model().save_pretrained(tmp_path)
    # The first layer on the first GPU, the others on the second GPU, or mapped to the CPU beside one GPU.
    layer_placement = [0, 1, 1] if torch.cuda.device_count() > 1 else [0, "cpu", "cpu"]
    device_map = {
        "model.embed_tokens": 0,
        "model.rotary_emb": 0,
        **{f"model.layers.{i}": where for i, where in enumerate(layer_placement)},
        "model.norm": "cpu",
        "lm_head": "cpu",
    }
    placed = AutoModelForCausalLM.from_pretrained(tmp_path, device_map=device_map, attn_implementation="sdpa").eval()
    layer_devices = [execution_device(layer) for layer in placed.model.layers]
    whole = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    outputs, caches = [], []
    for model, device in ((placed, layer_devices[0]), (whole, torch.device("cpu"))):
        model.generation_config.eos_token_id = None
        cache = LookaheadCache(budget=24, scorer="snapkv", allocation=allocation, sink=2, window=4)
        prompt = prompt_ids(96).to(device)
        outputs.append(
            model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=4,
                do_sample=False,
                **{CACHE_ARGUMENT: cache},
            ).cpu()
        )
        caches.append(cache)
    placed_cache, whole_cache = caches
    for layer, device in zip(placed_cache.layers, layer_devices, strict=True):
        assert {tensor.device for tensor in placed_tensors(layer)} == {device}
    assert torch.equal(placed_cache.kept_tokens().cpu(), whole_cache.kept_tokens())
    assert torch.equal(outputs[0], outputs[1])
