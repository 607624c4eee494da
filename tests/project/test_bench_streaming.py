"""scripts/bench_streaming.py measures what it says: at a tiny geometry, streaming's peak KV is the budget plus a chunk
whatever the prompt, decode-time eviction's the budgets whatever the answer, the full cache's grows with both."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_streaming.py"
GEOMETRY = ["--layers", "2", "--hidden-size", "64", "--heads", "4", "--kv-heads", "2", "--intermediate-size", "32"]
SETTINGS = ["--budget", "16", "--chunk", "32", "--sink", "2", "--window", "4", *GEOMETRY]
SETTINGS += ["--generation-budget", "12", "--generation-interval", "4"]
TOKEN_BYTES = 2 * 2 * 16 * 4  # keys and values, 2 KV heads, head_dim 16, float32


def load_script():
    spec = importlib.util.spec_from_file_location("bench_streaming", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script():
    return load_script()


@pytest.mark.parametrize("length", [96, 192])
def test_streaming_peak_kv_stays_at_budget_plus_chunk_while_the_full_cache_grows(script, length):
    args = script.parse_args(["--lengths", str(length), "--new-tokens", "2", *SETTINGS])
    full, streaming = (script.measure(args, method, length) for method in ("full", "streaming"))
    # The full cache's peak is its size after the prompt and the two decoded tokens.
    assert full["peak_kv_bytes"] == 2 * (length + 2) * TOKEN_BYTES
    assert streaming["peak_kv_bytes"] <= (2 * 16 + 32) * TOKEN_BYTES
    assert full["decode_ms_per_token"] > 0 and streaming["decode_ms_per_token"] > 0


def test_decode_time_eviction_bounds_a_long_answer(script):
    args = script.parse_args(["--lengths", "48", "--new-tokens", "80", *SETTINGS])
    one_shot, evicting = (script.measure(args, method, 48) for method in ("one-shot", "decode-evicting"))
    # One-shot keeps every generated token; decode-time eviction at most the generation budget after the prompt,
    # and the prefill held one whole layer of the prompt at most.
    assert one_shot["peak_kv_bytes"] == 2 * (16 + 80) * TOKEN_BYTES
    assert evicting["peak_kv_bytes"] <= max(2 * (16 + 12), 16 + 48) * TOKEN_BYTES
    assert evicting["generation_budget"] == 12 and one_shot["generation_budget"] is None


@pytest.mark.slow
def test_the_command_measures_each_method_in_a_process_of_its_own_and_plots(tmp_path):
    out = tmp_path / "rows.jsonl"
    command = [sys.executable, str(SCRIPT), "--lengths", "64", "--methods", "full", "decode-evicting"]
    command += ["--new-tokens", "40", *SETTINGS, "--out", str(out), "--plot", str(tmp_path / "plot.png")]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    rows = {row["method"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert rows["full"]["peak_kv_bytes"] == 2 * (64 + 40) * TOKEN_BYTES
    assert rows["decode-evicting"]["peak_kv_bytes"] < rows["full"]["peak_kv_bytes"]
    assert all(row["peak_process_bytes"] > 0 for row in rows.values())
    assert (tmp_path / "plot.png").stat().st_size > 0
