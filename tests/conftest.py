import os
from collections.abc import Callable

# Before anything imports triton (transformers does): triton.jit picks the interpreter when a kernel is defined,
# and the kernel tests run the Triton kernels on CPU through it.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hub_server import local_hub  # noqa: E402, F401
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

# Under pytest-xdist (`-n auto`) the workers share the cores: one intra-op thread pool per core, not per worker each
# as wide as the machine, which oversubscribes the cores and makes every worker slower than the tests run serially.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

COMMON = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

TINY_CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON),
    "qwen2": lambda: Qwen2Config(**COMMON),
    "qwen3": lambda: Qwen3Config(**COMMON, head_dim=16),
    "mistral": lambda: MistralConfig(**COMMON, sliding_window=None),
    "gemma3": lambda: Gemma3TextConfig(
        **COMMON,
        head_dim=16,
        sliding_window=8,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    ),
}
ARCHITECTURES = list(TINY_CONFIGS)


def tiny_model(architecture: str = "llama", attn_implementation: str = "sdpa", seed: int = 0, **config_changes):
    """A random-weight model (its config changed by `config_changes`, e.g. more heads); its weights are scaled up so
    that attention is peaked, like a trained model's."""
    torch.manual_seed(seed)
    config = TINY_CONFIGS[architecture]()
    config.update(config_changes)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(4.0)
    # Random weights hit the end-of-sequence token by chance; the tests compare fixed-length outputs.
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = config.pad_token_id
    return model.eval()


def tiny_lookahead_model(architecture: str = "llama", **config_changes):
    """A tiny model (`tiny_model(architecture, **config_changes)`) with a lookahead adapter of 4 tokens whose LoRA is
    far from a no-op, so that LoRA outside the lookahead rows would show."""
    from lookahead_cache.adapters import LookaheadConfig, add_lookahead

    model = add_lookahead(tiny_model(architecture, **config_changes), LookaheadConfig(num_tokens=4))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    return model.eval()


def interrupt_training(monkeypatch) -> Callable[[], None]:
    """Make training raise KeyboardInterrupt in its third example's loss, as a run killed mid-step; returns the function
    that gives training back its real loss, for the resumed run."""
    from lookahead_cache.training import trainer

    real_loss, calls = trainer.example_loss, []

    def interrupted(model, example, modules, recording=None):
        calls.append(example.sample_id)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(model, example, modules, recording)

    monkeypatch.setattr(trainer, "example_loss", interrupted)
    return lambda: monkeypatch.setattr(trainer, "example_loss", real_loss)


def decoder_input_lengths(model, run: Callable[[], object]) -> tuple[list[int], object]:
    """The lengths of the decoder's inputs (lookahead and question rows included) while `run()` runs, and what it
    returned."""
    seen = []

    def record(module, args, kwargs):
        inputs = kwargs.get("inputs_embeds")
        seen.append((kwargs["input_ids"] if inputs is None else inputs).shape[1])

    # Registered after a lookahead adapter's own hook, so it sees the inputs that hook made.
    handle = model.get_decoder().register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = run()
    finally:
        handle.remove()
    return seen, result


def prompt_ids(length: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(3, 128, (batch, length), generator=generator)


def kept_positions(layer, full_keys: torch.Tensor) -> torch.Tensor:
    """`[batch, kv_heads, prompt_len]`, True where a compressed layer (packed or padded) right after prefill kept that
    prompt token, found by its key in `full_keys` (the full cache's; equal up to rounding where the prefill ran
    another shape, e.g. with lookahead rows)."""
    from lookahead_cache.storage import PackedLayer

    keys = layer.padded()[0] if isinstance(layer, PackedLayer) else layer.keys
    valid = layer.slot_valid()
    valid = torch.ones(keys.shape[:3], dtype=torch.bool) if valid is None else valid.expand(keys.shape[:3])
    close = torch.isclose(keys[:, :, :, None], full_keys[:, :, None], rtol=1e-4, atol=1e-5).all(-1)
    matches = close & valid[..., None]
    assert bool((matches.sum(-1) == valid).all()), "a kept slot matches no prompt token, or several"
    return matches.any(2)


@pytest.fixture(scope="session")
def default_model():
    pytest.importorskip("gguf")
    from lookahead_cache import load_default_model

    return load_default_model()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A random-weight Llama with the embedded model's tokenizer, saved like any local checkpoint."""
    pytest.importorskip("gguf")
    from lookahead_cache.default_model import load_default_tokenizer

    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), load_default_tokenizer(), context_length=4096)


def save_tiny_llama(directory, tokenizer, context_length: int):
    """Save a random-weight 2-layer Llama (seed 0) for `tokenizer`, with the tokenizer, to `directory`."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context_length,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def synthetic_profile(
    layers: int = 3,
    kv_heads: int = 2,
    scorer: str = "snapkv",
    seed: int = 0,
    model=None,
    sink: int = 2,
    window: int = 4,
):
    """A LU-KV profile of a tiny model (`tiny_model()` unless given) whose heads prune at different speeds, for caches
    that protect `sink` and `window` tokens."""
    from lookahead_cache.adapters.config import BaseModelSignature
    from lookahead_cache.profiling import HeadProfile
    from lookahead_cache.profiling.solver import GLOBAL_RATIOS

    generator = torch.Generator().manual_seed(seed)
    steepness = torch.rand(layers, kv_heads, generator=generator) * 2 + 0.5
    ratios = torch.tensor(GLOBAL_RATIOS)[:, None, None] ** steepness
    return HeadProfile(
        prune_ratios=ratios.float(),
        scorer=scorer,
        sink=sink,
        window=window,
        layers=list(range(layers)),
        base_model=BaseModelSignature.of((model or tiny_model()).config),
        calibration={"source": "synthetic, for tests"},
    )
