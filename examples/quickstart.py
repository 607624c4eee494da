"""LookaheadCache with `generate` and with a text-generation pipeline, on the embedded SmolLM2-135M-Instruct.

    python examples/quickstart.py

Any transformers causal LM works the same way: replace `load_default_model()` with
`AutoModelForCausalLM.from_pretrained(...)` and `AutoTokenizer.from_pretrained(...)`.
"""

from pydoc_data.topics import topics
from transformers import pipeline

from lookahead_cache import LookaheadCache, LookaheadTextGenerationPipeline, load_default_model

model, tokenizer = load_default_model()
document = topics["for"] + topics["while"]
question = "Which clause of a loop runs when the loop ends without a break?"
messages = [{"role": "user", "content": f"{document}\n\nQuestion: {question}"}]

# 1. generate: the cache keeps 256 prompt tokens per layer and KV head after prefill.
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
cache = LookaheadCache(budget=256, scorer="snapkv")
output = model.generate(**inputs, past_key_values=cache, max_new_tokens=32, do_sample=False)
prompt_tokens = inputs["input_ids"].shape[-1]
print(f"generate: {tokenizer.decode(output[0, prompt_tokens:], skip_special_tokens=True)!r}")
print(
    f"  prompt tokens: {prompt_tokens}, tokens stored per layer and KV head (kept prompt + generated): {cache.kept_tokens().float().mean():.0f}, "
    f"KV bytes now: {cache.nbytes() / 2**20:.1f} MiB, peak during prefill: {cache.peak_nbytes / 2**20:.1f} MiB"
)

# 2. pipeline: the cache passed is a template; every input gets a fresh copy of it.
pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, pipeline_class=LookaheadTextGenerationPipeline)
questions = [question, "What does the for statement iterate over?"]
chats = [[{"role": "user", "content": f"{document}\n\nQuestion: {q}"}] for q in questions]
results = pipe(chats, past_key_values=LookaheadCache(budget=256, scorer="snapkv"), max_new_tokens=32, do_sample=False)
for q, result in zip(questions, results):
    print(f"pipeline: {q!r} -> {result[0]['generated_text'][-1]['content']!r}")
