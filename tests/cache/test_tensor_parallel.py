"""Tensor parallelism: a model that transformers shards over two processes (`tp_plan="auto"` under torchrun, gloo on
CPU) generates through a LookaheadCache the tokens that one process holding the whole model generates, for every
allocation and for the lookahead scorer (with a PEFT release that splits the LoRA; older ones are refused).

Run by torchrun, this file is the worker: it generates with the models the test saved and writes each process's
tokens.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import peft
import pytest
import torch
import torch.distributed as dist
from packaging import version

from lookahead_cache import LookaheadCache, load_lookahead
from lookahead_cache.adapters import get_lookahead
from lookahead_cache.adapters.injection import PEFT_FOR_TENSOR_PARALLEL
from lookahead_cache.prefill import CACHE_ARGUMENT

ARCHITECTURES = ("llama", "qwen3")
# Two KV heads per process: an allocation that shared a layer's budget among one process's heads only would differ.
HEADS = dict(num_attention_heads=8, num_key_value_heads=4)
# Protected tokens as the synthetic LU-KV profile counts them.
SINK, WINDOW = 2, 4
# Older PEFT releases cannot put the lookahead LoRA into a split model: there the worker checks the refusal instead.
LOOKAHEAD_UNDER_TENSOR_PARALLEL = version.parse(peft.__version__) >= version.parse(PEFT_FOR_TENSOR_PARALLEL)
SETTINGS = {
    f"{scorer} {allocation}": dict(scorer=scorer, allocation=allocation)
    for scorer, allocations in [
        ("snapkv", ["uniform", "pyramid", "adakv", "lukv"]),
        ("lookahead", ["uniform", "adakv"] if LOOKAHEAD_UNDER_TENSOR_PARALLEL else []),
    ]
    for allocation in allocations
}


def generate_every_setting(folder: Path, tensor_parallel: bool) -> dict[str, list[list[int]]]:
    """The tokens that each architecture's model saved in `folder`, with its lookahead adapter and LU-KV profile,
    generates for two left-padded prompts in each setting; sharded over this torchrun's processes if
    `tensor_parallel`."""
    from transformers import AutoModelForCausalLM

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 128, (2, 200), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, :50] = 0
    input_ids[1, :50] = 0
    tokens = {}
    for architecture in ARCHITECTURES:
        model = AutoModelForCausalLM.from_pretrained(
            folder / architecture / "model", tp_plan="auto" if tensor_parallel else None
        )
        if tensor_parallel and not LOOKAHEAD_UNDER_TENSOR_PARALLEL:
            with pytest.raises(
                ValueError, match=f"cannot put the lookahead LoRA into it.*peft>={PEFT_FOR_TENSOR_PARALLEL}"
            ):
                load_lookahead(model, folder / architecture / "adapter")
        else:
            load_lookahead(model, folder / architecture / "adapter")
        for name, settings in SETTINGS.items():
            profile = {"profile": str(folder / architecture / "profile")} if settings["allocation"] == "lukv" else {}
            cache = LookaheadCache(budget=64, sink=SINK, window=WINDOW, allocation_kwargs=profile, **settings)
            output = model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                max_new_tokens=8,
                do_sample=False,
                **{CACHE_ARGUMENT: cache},
            )
            tokens[f"{architecture} {name}"] = output[:, input_ids.shape[1] :].tolist()
    return tokens


@pytest.mark.slow
def test_two_processes_generate_what_one_process_generates(tmp_path):
    # From conftest inside the tests: the torchrun worker, which runs this file as a script, has no conftest to import.
    from conftest import synthetic_profile, tiny_lookahead_model, tiny_model

    for architecture in ARCHITECTURES:
        model = tiny_model(architecture, **HEADS)
        model.save_pretrained(tmp_path / architecture / "model")
        # The same base weights (same seed), with a lookahead adapter whose LoRA is far from a no-op.
        with_adapter = tiny_lookahead_model(architecture, **HEADS)
        get_lookahead(with_adapter).save_pretrained(tmp_path / architecture / "adapter")
        profile = synthetic_profile(kv_heads=HEADS["num_key_value_heads"], model=model, sink=SINK, window=WINDOW)
        profile.save_pretrained(tmp_path / architecture / "profile")
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__, tmp_path],
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    alone = generate_every_setting(tmp_path, tensor_parallel=False)
    for rank in range(2):
        assert json.loads((tmp_path / f"tokens-{rank}.json").read_text()) == alone, f"process {rank}"


def test_a_per_head_allocation_refuses_heads_it_cannot_tell_apart(tmp_path):
    # A process that holds fewer KV heads than its model has, split otherwise than by transformers' sharded weights,
    # cannot share a layer's budget among all its heads: it must say so rather than share it among its own.
    from conftest import prompt_ids, tiny_model

    model = tiny_model("llama")
    model.config.num_key_value_heads = 4  # the model counts 4 heads, of which this process holds its 2
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="holds 2 of the 4 KV heads of LlamaAttention, and lookahead-cache cannot"):
            model.generate(
                prompt_ids(128),
                max_new_tokens=1,
                **{CACHE_ARGUMENT: LookaheadCache(budget=64, scorer="snapkv", allocation="adakv")},
            )
        model.generate(
            prompt_ids(128), max_new_tokens=1, **{CACHE_ARGUMENT: LookaheadCache(budget=64, scorer="snapkv")}
        )
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    folder = Path(sys.argv[1])
    tokens = generate_every_setting(folder, tensor_parallel=True)
    (folder / f"tokens-{dist.get_rank()}.json").write_text(json.dumps(tokens))
    dist.destroy_process_group()
