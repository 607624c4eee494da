from pathlib import Path
from lookahead_cache import load_default_model
from lookahead_cache.training import TrainingConfig
from lookahead_cache.training.data import build_prompts, prepare_examples
model, tok = load_default_model()
cfg = TrainingConfig(lengths=[1024, 2048], samples_per_task=20, response_tokens=48, epochs=3,
                     validation_samples_per_task=2, save_every=25)
out = Path("runs/train-v2")
prepare_examples(model, tok, cfg, out / "validation", samples=build_prompts(tok, cfg, validation=True))
print("VALIDATION_DONE", flush=True)
prepare_examples(model, tok, cfg, out)
print("TRAIN_DONE", flush=True)
