"""Model cards for lookahead adapters, rendered from the templates in `hub_cards/`."""

from __future__ import annotations

import json
from importlib.resources import files
from string import Template

from .config import LookaheadConfig

ADAPTER_CARD_TEMPLATE = "lookahead_adapter.md"


def render_model_card(config: LookaheadConfig, evaluation: str | None = None) -> str:
    """The README.md of a lookahead adapter: YAML metadata, usage, training recipe, evaluation, limitations."""
    template = Template(files("lookahead_cache.hub_cards").joinpath(ADAPTER_CARD_TEMPLATE).read_text())
    return template.substitute(
        base_model=config.base_model_name_or_path or (config.base_model.model_type if config.base_model else "unknown"),
        num_tokens=config.num_tokens,
        lora_rank=config.lora_rank,
        lora_alpha=config.lora_alpha,
        target_modules=", ".join(config.target_modules),
        training=_training_section(config.training),
        evaluation=evaluation or "Not evaluated yet: run `lookahead-cache eval --methods full snapkv lookahead ...`.",
    )


def _training_section(training: dict) -> str:
    if not training:
        return "Not recorded."
    lines = []
    for key, value in training.items():
        shown = value if isinstance(value, str | int | float) else json.dumps(value)
        lines.append(f"- **{key}**: {shown}")
    return "\n".join(lines)
