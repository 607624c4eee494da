"""A text-generation pipeline that gives every input its own LookaheadCache."""

from __future__ import annotations

from transformers import TextGenerationPipeline

from .cache import LookaheadCache


class LookaheadTextGenerationPipeline(TextGenerationPipeline):
    """`TextGenerationPipeline` where a `cache=LookaheadCache(...)` (`past_key_values=` before transformers 5.24) argument
    is a template.

    The stock pipeline forwards generate kwargs as they are, so a single cache object would be shared by every
    input of a call and the second input would continue the first one's cache. Here each forward gets
    `template.fresh()`, an empty cache with the same settings::

        pipe = pipeline("text-generation", model=model, tokenizer=tokenizer,
                        pipeline_class=LookaheadTextGenerationPipeline)
        pipe(prompts, cache=LookaheadCache(budget=256), max_new_tokens=32)
    """

    def _forward(self, model_inputs, **generate_kwargs):
        for name in ("cache", "past_key_values"):
            if isinstance(generate_kwargs.get(name), LookaheadCache):
                generate_kwargs[name] = generate_kwargs[name].fresh()
        return super()._forward(model_inputs, **generate_kwargs)
