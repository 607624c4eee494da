"""Step time per process: `lookahead-cache train` (and `profile`) in 1 and in N CPU processes on the same cores.

Each run (`--runs`, processes x threads each: by default one process of all the cores, then two of half each) does
the same short training, side by side in this one invocation: the same prompts, the same global batch (`--batch`
prompts a step: `--grad-accum batch / N` in each of N processes), under torchrun with gloo for N > 1, each process
given its threads by OMP_NUM_THREADS. The responses are made once beforehand (`--responses-only`) into one file
every run reads, so no run's steps include making them (one process would make them inside its first epoch's steps,
several before their first step). A run's step time is the seconds its checkpoint's `trainer_state.json` records over
its steps (the steps alone: not the loading, the responses or the checkpoints). The speed-up is over the first run.

`profile` (unless `--profile-questions 0`) runs on the same model in each run's processes; its time per prompt is
the run's wall time less that of a rerun which finds every prompt's tables and so does the rest (starting, loading
the model, the final profile) alone, over the prompts. For it a step is a prompt.

The model is `--model`, or by default a random-weight Llama of `--layers` and `--hidden-size` with the embedded
model's tokenizer (the `default-model` extra), saved to a temporary folder. CPU only: the runs set
`ACCELERATE_USE_CPU=1`, whatever GPUs there are.

    python scripts/bench_processes.py --runs 1x2 2x1 1x1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build_model(args: argparse.Namespace, folder: Path) -> Path:
    """A random-weight Llama with the embedded model's tokenizer, saved in `folder`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from lookahead_cache.default_model import load_default_tokenizer

    tokenizer = load_default_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=2 * args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden_size // 32,
        num_key_value_heads=max(1, args.hidden_size // 128),
        max_position_embeddings=4 * max(max(args.lengths), args.context_length),
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def launch(argv: list[str], processes: int, threads: int) -> float:
    """Run the CLI with `argv` in `processes` processes of `threads` threads each; its wall seconds."""
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": str(threads)}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    started = time.perf_counter()
    subprocess.run([*launcher, "-m", "lookahead_cache.cli", *argv], env=environment, check=True)
    return time.perf_counter() - started


def train_argv(args: argparse.Namespace, model: Path, responses: Path, processes: int) -> list[str]:
    argv = ["train", "--model", str(model), "--tasks", *args.tasks, "--lengths", *map(str, args.lengths)]
    argv += ["--samples-per-task", str(args.samples_per_task), "--response-tokens", str(args.response_tokens)]
    argv += ["--epochs", "1", "--num-tokens", "4", "--warmup-steps", "1", "--validation-samples-per-task", "0"]
    # One checkpoint, after the last step: its trainer_state.json holds the seconds of all of them.
    argv += ["--save-every", "1000000", "--responses", str(responses)]
    return argv + ["--grad-accum", str(args.batch // processes)]


def profile_argv(args: argparse.Namespace, model: Path, out: Path) -> list[str]:
    argv = ["profile", "--model", str(model), "--scorers", "snapkv", "--context-length", str(args.context_length)]
    return argv + ["--questions", str(args.profile_questions), "--answer-tokens", "4", "--out", str(out)]


def measure(args: argparse.Namespace, model: Path, work: Path) -> list[dict]:
    """One row per command and run: steps, seconds per step, prompts per second."""
    responses = work / "responses.jsonl"
    responses_only = [*train_argv(args, model, responses, 1), "--out", str(work / "responses"), "--responses-only"]
    launch(responses_only, 1, args.runs[0][1])
    rows = []
    for processes, threads in args.runs:
        run = work / f"train_{processes}x{threads}"
        launch([*train_argv(args, model, responses, processes), "--out", str(run)], processes, threads)
        state = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
        if rows and state["step"] != rows[0]["steps"]:
            # Processes that each trained alone (a launcher that did not join them) would take more, smaller steps.
            raise RuntimeError(f"{run.name} took {state['step']} steps, {rows[0]['steps']} in the first run.")
        seconds = state["seconds"] / state["step"]
        rows.append(row("train", processes, threads, state["step"], seconds, args.batch))
    for processes, threads in args.runs if args.profile_questions else []:
        out = work / f"profile_{processes}x{threads}"
        working = launch(profile_argv(args, model, out), processes, threads)
        resumed = launch(profile_argv(args, model, out), processes, threads)
        seconds = (working - resumed) / args.profile_questions
        rows.append(row("profile", processes, threads, args.profile_questions, seconds, 1))
    return rows


def row(command: str, processes: int, threads: int, steps: int, seconds: float, prompts_per_step: int) -> dict:
    return {
        "command": command,
        "processes": processes,
        "threads": threads,
        "steps": steps,
        "seconds": seconds,
        "prompts_per_second": prompts_per_step / seconds,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| command | processes | threads each | steps | seconds per step | prompts per second | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        first = next(other for other in rows if other["command"] == row["command"])
        lines.append(
            f"| {row['command']} | {row['processes']} | {row['threads']} | {row['steps']} | {row['seconds']:.3f} | "
            f"{row['prompts_per_second']:.2f} | {first['seconds'] / row['seconds']:.2f} |"
        )
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = os.cpu_count()
    parser.add_argument(
        "--runs",
        type=run_shape,
        nargs="+",
        metavar="PROCESSESxTHREADS",
        default=[(1, cores), (2, max(1, cores // 2))],
        help=f"The runs: processes, and threads of each process; the first is the speed-ups' baseline. (default: "
        f"1x{cores} 2x{max(1, cores // 2)})",
    )
    parser.add_argument("--model", help="A local model folder (default: a random-weight Llama built here).")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--tasks", nargs="+", default=["niah_single_noise"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512])
    parser.add_argument("--samples-per-task", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4, help="Prompts a step, all processes together.")
    parser.add_argument("--response-tokens", type=int, default=8)
    parser.add_argument("--profile-questions", type=int, default=8, help="Prompts `profile` runs on; 0: no profile.")
    parser.add_argument("--context-length", type=int, default=1024, help="Length of the profile's prompts.")
    args = parser.parse_args(argv)
    for processes, _ in args.runs:
        if args.batch % processes:
            parser.error(f"--batch {args.batch} must divide by each run's processes; {processes} does not divide it.")
    return args


def run_shape(text: str) -> tuple[int, int]:
    processes, threads = map(int, text.split("x"))
    return processes, threads


def main(argv=None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench_processes_") as folder:
        work = Path(folder)
        model = Path(args.model) if args.model else build_model(args, work / "model")
        rows = measure(args, model, work)
    print(table(rows))


if __name__ == "__main__":
    main()
