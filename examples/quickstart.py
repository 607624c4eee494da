"""LookaheadCache on the embedded SmolLM2-135M-Instruct: `generate`, byte accounting, the text-generation pipeline
and the lookahead adapter.

    python examples/quickstart.py

Any transformers causal LM works the same way: replace `load_default_model()` with
`AutoModelForCausalLM.from_pretrained(...)` and `AutoTokenizer.from_pretrained(...)`. With transformers older than
5.24, pass the cache as `past_key_values=` instead of `cache=`.
"""

from pydoc_data.topics import topics
from transformers import pipeline

from lookahead_cache import LookaheadCache, LookaheadTextGenerationPipeline, load_default_model

document = topics["for"] + topics["while"]
question = "Which clause of a loop runs when the loop ends without a break?"
messages = [{"role": "user", "content": f"{document}\n\nQuestion: {question}"}]

# The model with the lookahead adapter shipped for it (any transformers causal LM works without one).
model, tokenizer = load_default_model(lookahead=True)

# 1. generate, with a heuristic scorer: the cache keeps 256 prompt tokens per layer and KV head after prefill.
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
cache = LookaheadCache(budget=256, scorer="snapkv")
output = model.generate(**inputs, cache=cache, max_new_tokens=32, do_sample=False)
prompt_tokens = inputs["input_ids"].shape[-1]
print(f"generate (snapkv): {tokenizer.decode(output[0, prompt_tokens:], skip_special_tokens=True)!r}")

# 2. Bytes: what the cache holds now, what the model's own DynamicCache would hold, the most held during prefill.
print(
    f"  prompt tokens: {prompt_tokens}; stored per layer and KV head (kept prompt + generated): "
    f"{cache.kept_tokens().float().mean():.0f}; KV cache {cache.nbytes() / 2**20:.2f} MiB instead of "
    f"{cache.full_cache_nbytes() / 2**20:.2f} MiB; peak during prefill {cache.peak_nbytes / 2**20:.2f} MiB"
)

# 3. pipeline: the cache passed is a template; every input gets a fresh copy of it.
pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, pipeline_class=LookaheadTextGenerationPipeline)
questions = [question, "What does the for statement iterate over?"]
chats = [[{"role": "user", "content": f"{document}\n\nQuestion: {q}"}] for q in questions]
results = pipe(chats, cache=LookaheadCache(budget=256), max_new_tokens=32, do_sample=False)
for q, result in zip(questions, results):
    print(f"pipeline: {q!r} -> {result[0]['generated_text'][-1]['content']!r}")

# 4. The learned lookahead scorer: LookaheadCache()'s default scorer ("auto") picks it whenever the model carries a
# lookahead adapter, and falls back to snapkv (saying so) on a model without one.
cache = LookaheadCache(budget=256)
output = model.generate(**inputs, cache=cache, max_new_tokens=32, do_sample=False)
print(f"generate (lookahead): {tokenizer.decode(output[0, prompt_tokens:], skip_special_tokens=True)!r}")
