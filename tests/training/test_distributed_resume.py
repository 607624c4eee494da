"""A 2-process training run killed after a checkpoint resumes to the adapter an uninterrupted 2-process run writes.

Run as a script (under torchrun), this file is the killed worker: the `train` command whose rank 0 is SIGKILLed in
`KILLED_AT_STEP`, after the checkpoint of step `SAVE_EVERY` and the log of the step after it were written.
"""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

SAVE_EVERY = 2
# Step 3 is logged but not checkpointed when step 4 dies: the resumed run must drop it from the log and redo it.
KILLED_AT_STEP = 4
ADAPTER_FILES = ("adapter_model.safetensors", "lookahead_embeddings.safetensors")


def train_argv(model_dir, out):
    # Eight prompts over two epochs, one per process per step: four optimizer steps.
    argv = ["train", "--model", str(model_dir), "--tasks", "niah_single_noise", "--lengths", "384"]
    argv += ["--samples-per-task", "4", "--response-tokens", "4", "--epochs", "2", "--num-tokens", "4"]
    argv += ["--grad-accum", "1", "--warmup-steps", "1", "--validation-samples-per-task", "0"]
    return argv + ["--save-every", str(SAVE_EVERY), "--out", str(out)]


def torchrun(script_and_args, check=True):
    # ACCELERATE_USE_CPU puts accelerate in its multi-CPU (gloo) mode; --standalone picks a free rendezvous port.
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    return subprocess.run(command + script_and_args, check=check, env=environment, capture_output=not check)


def logged_losses(run_dir):
    return [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_adapter(tiny_model_dir, tmp_path):
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    torchrun(["-m", "lookahead_cache.cli", *train_argv(tiny_model_dir, uninterrupted)])

    crashed = torchrun([__file__, *train_argv(tiny_model_dir, killed)], check=False)
    assert crashed.returncode != 0, crashed.stderr.decode()[-2000:]
    assert not (killed / "adapter").exists()
    assert json.loads((killed / "checkpoint" / "trainer_state.json").read_text())["step"] == SAVE_EVERY
    assert [row["step"] for row in logged_losses(killed)] == list(range(1, KILLED_AT_STEP))

    torchrun(["-m", "lookahead_cache.cli", *train_argv(tiny_model_dir, killed)])
    whole, resumed = logged_losses(uninterrupted), logged_losses(killed)
    assert [row["step"] for row in whole] == [1, 2, 3, 4]
    # Exact: the same two processes sum the same gradients in the same order from the same state.
    assert resumed == whole
    for name in ADAPTER_FILES:
        expected, actual = (load_file(str(run / "adapter" / name)) for run in (uninterrupted, killed))
        assert expected.keys() == actual.keys()
        for key in expected:
            assert torch.equal(expected[key], actual[key]), key


def kill_rank_zero_in_the_step(step: int) -> None:
    """SIGKILL rank 0 as it starts the loss of `step` (one prompt per process per step): no handler, no cleanup, as
    an out-of-memory kill or a lost node; torchrun then stops the other rank."""
    from lookahead_cache.training import trainer

    real_loss, calls = trainer.example_loss, []

    def dying(*args, **kwargs):
        calls.append(None)
        if len(calls) == step and os.environ["RANK"] == "0":
            os.kill(os.getpid(), signal.SIGKILL)
        return real_loss(*args, **kwargs)

    trainer.example_loss = dying


if __name__ == "__main__":
    from lookahead_cache.cli import main

    kill_rank_zero_in_the_step(KILLED_AT_STEP)
    sys.exit(main(sys.argv[1:]))
