"""Under several processes every process makes the responses of its share of the missing prompts, and the responses
file ends up as one process writes it.

Run as a script (under torchrun), this file is the `lookahead-cache` command with accelerate's process state made
first as `Accelerator()` makes it from ACCELERATE_USE_CPU (gloo over CPU processes): a `PartialState()` made before
it without `cpu=True` (training/command.py's disk estimate) sees one process where there are two.
"""

import json
import os
import subprocess
import sys

import pytest

from lookahead_cache.training.data import merge_process_responses, process_responses_path


def responses_argv(model_dir, out):
    # A prompt at each of three lengths, for training and for validation: three batches of responses in each, two for
    # process 0 (the first and the third), one for process 1, whose rows the merge puts between process 0's.
    argv = ["train", "--model", str(model_dir), "--tasks", "niah_single_noise", "--lengths", "256", "384", "512"]
    argv += ["--samples-per-task", "1", "--validation-samples-per-task", "1", "--response-tokens", "4"]
    return argv + ["--responses-only", "--out", str(out)]


def torchrun(processes, argv):
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    done = subprocess.run(command + [__file__, *argv], env=environment, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return done.stderr.decode()


@pytest.mark.slow
def test_two_processes_share_the_responses_and_write_the_file_one_process_writes(tiny_model_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    torchrun(1, responses_argv(tiny_model_dir, one))
    log = torchrun(2, responses_argv(tiny_model_dir, two))

    # Each process made its share of each call's batches (validation, then training).
    assert log.count("Process 0 of 2 made 2 of the 3 missing responses (2 of 3 batches).") == 2, log
    assert log.count("Process 1 of 2 made 1 of the 3 missing responses (1 of 3 batches).") == 2, log
    rows = (one / "responses.jsonl").read_text()
    assert len(rows.splitlines()) == 6
    assert (two / "responses.jsonl").read_text() == rows
    assert not list(two.glob("responses.process*.jsonl"))
    # The validation prompts' stored keys, values and targets, each stored by the process that made its response.
    stored = sorted(path.relative_to(one) for path in (one / "validation").rglob("*.safetensors"))
    assert len(stored) == 6
    assert sorted(path.relative_to(two) for path in (two / "validation").rglob("*.safetensors")) == stored
    for path in stored:
        assert (two / path).read_bytes() == (one / path).read_bytes(), path

    # Resumed with the responses made and the stored files gone: the processes store them again, a share each.
    for path in stored:
        (two / path).unlink()
    log = torchrun(2, responses_argv(tiny_model_dir, two))
    assert "missing responses" not in log
    assert (two / "responses.jsonl").read_text() == rows
    for path in stored:
        assert (two / path).read_bytes() == (one / path).read_bytes(), path


def test_rows_an_interrupted_run_left_in_process_files_are_merged_once(tmp_path):
    responses = tmp_path / "responses.jsonl"

    def row(key):
        return {"key": key, "prompt_sha256": "0" * 16, "prompt_tokens": 3, "response_ids": [1, 2]}

    responses.write_text(json.dumps(row("a")) + "\n")
    process_responses_path(responses, 1).write_text(json.dumps(row("c")) + "\n" + json.dumps(row("a")) + "\n")
    process_responses_path(responses, 0).write_text(json.dumps(row("b")) + "\n")
    (tmp_path / "responses.processed.jsonl").write_text("not one of them\n")

    assert merge_process_responses(responses, order=["c", "b"]) == 2
    assert [json.loads(line)["key"] for line in responses.read_text().splitlines()] == ["a", "c", "b"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["responses.jsonl", "responses.processed.jsonl"]
    assert merge_process_responses(responses) == 0


if __name__ == "__main__":
    from accelerate import PartialState

    from lookahead_cache.cli import main

    PartialState(cpu=True)
    sys.exit(main(sys.argv[1:]))
