"""scripts/bench_processes.py runs `train` and `profile` in one and in two processes and prints a row for each run
(what the timings are is not checked: only that each row is whole, and that every run takes the same steps)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_processes.py"
SMALLEST = ["--runs", "1x1", "2x1", "--layers", "1", "--hidden-size", "64", "--lengths", "256"]
SMALLEST += ["--samples-per-task", "4", "--batch", "2", "--response-tokens", "2"]
SMALLEST += ["--profile-questions", "2", "--context-length", "300"]


@pytest.mark.slow
def test_the_table_has_a_whole_row_per_command_and_run():
    pytest.importorskip("gguf")
    done = subprocess.run([sys.executable, str(SCRIPT), *SMALLEST], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == [
        "command",
        "processes",
        "threads each",
        "steps",
        "seconds per step",
        "prompts per second",
        "speed-up",
    ]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    assert [(row[0], int(row[1]), int(row[2])) for row in rows] == [
        ("train", 1, 1),
        ("train", 2, 1),
        ("profile", 1, 1),
        ("profile", 2, 1),
    ]
    assert all(len(row) == len(header) and [float(cell) for cell in row[4:]] for row in rows)
    # Two prompts a step of the four (one form, one length, four samples), in one process or two: two steps each.
    assert [int(row[3]) for row in rows] == [2, 2, 2, 2]
    assert float(rows[0][6]) == float(rows[2][6]) == 1.0
