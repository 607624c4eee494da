"""The model that `train`, `profile` and `eval` work on: the embedded default, a local folder or a Hub model id, in
the dtype asked for, where `--device-map` places it."""

from __future__ import annotations

import os

import torch
from huggingface_hub.errors import HFValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from .adapters import load_lookahead
from .commands.eval import DEFAULT_MODEL, DEVICE_MAP_STRATEGIES
from .default_model import DEFAULT_ADAPTER_DIR, load_default_model

DeviceMap = str | int | dict[str, str | int]


def load_model(
    name: str,
    dtype: str = "float32",
    adapter: str | None = None,
    revision: str | None = None,
    device_map: DeviceMap | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model `name` (`DEFAULT_MODEL`, a local folder or a Hub id, read through `from_pretrained`) in `dtype`
    (`float32`, `bfloat16` or `float16`), in eval mode, with its lookahead adapter when `adapter` is given (a folder
    or Hub repo; `DEFAULT_MODEL`: the one shipped for the default model). `revision` pins a Hub model's branch, tag
    or commit.

    `device_map` places the model as `from_pretrained` does: a strategy (`auto`, `balanced`, `balanced_low_0`,
    `sequential`) spreading its layers over the devices there are, one device (`cpu`, `cuda:0`, or an index), or a
    dict of module name to device. Without it the model is on the CPU. A placed model keeps `hf_device_map` (`{"":
    device}` where everything landed on one device), which tells `train` to leave it where it is.
    """
    torch_dtype = getattr(torch, dtype)
    check_device_map(device_map)
    if name == DEFAULT_MODEL:
        if revision is not None:
            raise ValueError(f"--revision {revision} names a Hub revision; the '{DEFAULT_MODEL}' model is embedded.")
        if isinstance(device_map, dict) or device_map in DEVICE_MAP_STRATEGIES:
            raise ValueError(
                f"--device-map {_shown(device_map)} spreads a model over devices; the embedded '{DEFAULT_MODEL}' model "
                "(135M parameters, 540 MB in float32) is placed on one device: pass --device-map cpu or cuda:0."
            )
        model, tokenizer = load_default_model(dtype=torch_dtype, device="cpu" if device_map is None else device_map)
    else:
        placement = {} if device_map is None else {"device_map": device_map}
        try:
            tokenizer = AutoTokenizer.from_pretrained(name, revision=revision)
            # safetensors only: a pickled checkpoint from a Hub repo could run code when loaded.
            model = AutoModelForCausalLM.from_pretrained(
                name,
                revision=revision,
                dtype=torch_dtype,
                attn_implementation="sdpa",
                use_safetensors=True,
                **placement,
            ).eval()
        except (OSError, HFValidationError) as error:
            raise ValueError(
                f"--model {name!r} is neither '{DEFAULT_MODEL}', a local model folder nor a Hub model id that loads "
                f"({type(error).__name__}: {error}). Pass a folder holding config.json and safetensors weights, or a "
                "Hub id (`org/name`; log in with `hf auth login` for a gated or private one)."
            ) from error
    if device_map is not None and getattr(model, "hf_device_map", None) is None:
        # transformers records no map where everything landed on one device: recorded here, so that `train` leaves
        # the model where it was asked to be.
        model.hf_device_map = {"": str(next(model.parameters()).device)}
    if adapter is not None:
        model = load_lookahead(model, DEFAULT_ADAPTER_DIR if adapter == DEFAULT_MODEL else adapter, tokenizer=tokenizer)
    return model, tokenizer


def check_device_map(device_map: DeviceMap | None) -> None:
    """Refuse a `device_map` naming a device this machine does not have (a CUDA device without CUDA, `cuda:3` with
    two GPUs, an unknown device type), naming the fix; strategies place on the devices there are."""
    if device_map is None or device_map in DEVICE_MAP_STRATEGIES:
        return
    places = device_map.values() if isinstance(device_map, dict) else [device_map]
    for place in places:
        if place == "disk":
            continue
        try:
            device = torch.device(place)
        except (RuntimeError, TypeError) as error:
            raise ValueError(
                f"--device-map {_shown(device_map)}: {place!r} is not a device torch knows ({error}). Name a device "
                f"such as cpu or cuda:0, or a strategy ({', '.join(DEVICE_MAP_STRATEGIES)})."
            ) from error
        if device.type == "cpu" and isinstance(place, str):
            continue
        if device.type == "cuda" or isinstance(place, int):
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            index = device.index or 0
            if index >= count:
                seen = f"only {count} CUDA device{'s' if count != 1 else ''}" if count else "no CUDA device"
                raise ValueError(
                    f"--device-map {_shown(device_map)} names CUDA device {index}, but torch sees {seen} here "
                    f"(CUDA_VISIBLE_DEVICES={_visible()}): name one it sees, pass --device-map cpu, or leave "
                    "--device-map out (the CPU)."
                )
        elif device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(
                f"--device-map {_shown(device_map)} names the mps device, which this machine does not have: pass "
                "--device-map cpu, or leave --device-map out."
            )


def _shown(device_map: DeviceMap) -> str:
    return "(a JSON map)" if isinstance(device_map, dict) else str(device_map)


def _visible() -> str:
    return os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
