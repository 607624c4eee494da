"""Validation KL of adapters on runs/train-v2/validation (prompts of the training families, seed 2000)."""
import sys
from pathlib import Path
import torch
from lookahead_cache import load_default_model
from lookahead_cache.adapters import load_lookahead
from lookahead_cache.training import TrainingConfig
from lookahead_cache.training.data import build_prompts, prepare_examples
from lookahead_cache.training.trainer import attention_modules, validation_loss, example_loss

base, tok = load_default_model()
cfg = TrainingConfig(lengths=[1024, 2048], samples_per_task=20, response_tokens=48, epochs=3,
                     validation_samples_per_task=2, save_every=25)
examples = prepare_examples(base, tok, cfg, Path("runs/train-v2/validation"), samples=build_prompts(tok, cfg, validation=True), disable_progress=True)
modules = attention_modules(base)
for adapter in sys.argv[1:]:
    model = load_lookahead(base, adapter, tokenizer=tok)
    with torch.no_grad():
        losses = [float(example_loss(model, e, modules)) for e in examples]
    fam = {}
    for e, l in zip(examples, losses):
        fam.setdefault(e.sample_id.split("/")[0], []).append(l)
    print(adapter, f"mean {sum(losses)/len(losses):.4f}", {k: round(sum(v)/len(v), 4) for k, v in fam.items()}, flush=True)
    base = model.unload() if hasattr(model, "unload") else base
