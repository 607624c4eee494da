"""docs/bring-your-own-model.md runs as written on a tiny random-weight Llama: its commands and Python blocks, with
the model swapped, the sizes shrunk (flags appended after the doc's, which argparse lets win), the training command
in one process instead of 8, and the upload committed to the loopback Hub server, which serves repos but takes no
uploads."""

import json
import os
import re
import shlex
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lookahead_cache import get_lookahead
from lookahead_cache.cli import main
from lookahead_cache.prefill import CACHE_ARGUMENT

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE = REPO_ROOT / "docs" / "bring-your-own-model.md"
SETUP_COMMANDS = ("export ", "hf auth login", "hf download ")
MULTI_PROCESS_LAUNCHER = ["torchrun", "--nproc-per-node", "8", "-m", "lookahead_cache.cli"]
SHRUNK = {
    "train": ["--response-tokens", "3", "--epochs", "1", "--num-tokens", "4", "--warmup-steps", "0"]
    + ["--save-every", "3", "--validation-fraction", "0.25"],
    "eval": ["--tasks", "niah_single_noise", "--lengths", "512", "--samples", "1", "--budgets", "64"],
}
PROFILE_SIZE = ("questions=30)", "questions=3, answer_tokens=4)")
ADAPTER_REPO = "recipe-org/tiny-llama-lookahead"
BUDGET = 512


def recipe_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", RECIPE.read_text(), flags=re.S | re.M)


def recipe_commands() -> list[str]:
    """The shell commands of the recipe's bash blocks, continuation lines joined, comments dropped."""
    lines = "\n".join(recipe_blocks("bash")).replace("\\\n", " ").splitlines()
    return [" ".join(shlex.split(line, comments=True)) for line in lines if shlex.split(line, comments=True)]


def write_prompts(path: Path) -> Path:
    """Eight prompts of a few hundred tokens: records to look up, as plain prompts and as chats."""
    rows = []
    for index in range(8):
        records = " ".join(f"Item {item} of batch {index} weighs {(item * 7 + index) % 50} kg." for item in range(30))
        question = f"{records}\n\nWhat does item {index + 3} weigh?"
        rows.append({"prompt": question} if index % 2 else {"messages": [{"role": "user", "content": question}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_command(command: str, local_hub) -> None:
    argv = [os.path.expandvars(arg) for arg in shlex.split(command)]
    if argv[:2] == ["hf", "upload"]:
        repo_id, folder, path_in_repo = argv[2:]
        assert path_in_repo == "."
        local_hub.publish(repo_id, Path(folder))
        return
    if argv[: len(MULTI_PROCESS_LAUNCHER)] == MULTI_PROCESS_LAUNCHER:
        argv = ["lookahead-cache", *argv[len(MULTI_PROCESS_LAUNCHER) :]]
    assert argv[0] == "lookahead-cache", f"the recipe runs a command this test does not know: {command}"
    assert main([*argv[1:], *SHRUNK.get(argv[1], [])]) == 0


@pytest.mark.slow
def test_the_recipe_runs_as_written_on_a_tiny_model(tiny_model_dir, local_hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "tiny-llama"
    settings = {
        "MODEL": str(tiny_model_dir),
        "MODEL_DIR": str(tiny_model_dir),
        "DATA": str(write_prompts(tmp_path / "my_prompts.jsonl")),
        "RUN": str(run),
        "REPO": ADAPTER_REPO,
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    commands = recipe_commands()
    setup = [command for command in commands if command.startswith(SETUP_COMMANDS)]
    assert {command.split("=")[0] for command in setup if "=" in command} == {f"export {name}" for name in settings}
    steps = [command for command in commands if command not in setup]
    profile_block, generate_block = recipe_blocks("python")
    assert profile_block.count(PROFILE_SIZE[0]) == 1

    responses_only, training, evaluation, upload = steps
    run_command(responses_only, local_hub)
    assert not (run / "adapter").exists() and (run / "responses.jsonl").stat().st_size > 0
    run_command(training, local_hub)
    exec(compile(profile_block.replace(*PROFILE_SIZE), f"<{RECIPE.name} profile block>", "exec"), {})
    run_command(evaluation, local_hub)
    run_command(upload, local_hub)

    published = {path.name for path in local_hub.repo_path(ADAPTER_REPO).iterdir()} - {".git"}
    assert {"README.md", "adapter_model.safetensors", "lookahead_embeddings.safetensors"} <= published
    profiles = {f"lukv_profile_{scorer}.{ext}" for scorer in ("snapkv", "lookahead") for ext in ("json", "safetensors")}
    assert profiles <= published
    card = (run / "best_adapter" / "README.md").read_text()
    assert f"base_model: {tiny_model_dir}" in card and "- **data**: " in card and "my_prompts.jsonl" in card
    assert load_file(str(run / "best_adapter" / "lookahead_embeddings.safetensors"))["embeddings"].shape[0] == 4
    assert list((run / "eval").iterdir())

    namespace = {}
    assert CACHE_ARGUMENT == "cache", "the recipe passes the cache as `cache=`, which transformers takes from 5.24 on"
    exec(compile(generate_block, f"<{RECIPE.name} generate block>", "exec"), namespace)
    # Loaded from the Hub repo, the adapter scored the prompt and its profile shared the budget (plus 32 answer tokens).
    kept = namespace["cache"].kept_tokens()
    prompt_length = namespace["inputs"]["input_ids"].shape[-1]
    assert prompt_length > BUDGET and float(kept.float().mean()) <= BUDGET + 32 and int(kept.max()) != int(kept.min())
    assert get_lookahead(namespace["model"]).source == ADAPTER_REPO
