"""scripts/bench_streaming.py measures what it says: at a tiny geometry, streaming's peak KV is the budget plus a chunk
whatever the prompt, the full cache's grows with it."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_streaming.py"
GEOMETRY = ["--layers", "2", "--hidden-size", "64", "--heads", "4", "--kv-heads", "2", "--intermediate-size", "32"]


@pytest.mark.slow
def test_streaming_peak_kv_stays_at_budget_plus_chunk_while_the_full_cache_grows(tmp_path):
    out = tmp_path / "rows.jsonl"
    command = [sys.executable, str(SCRIPT), "--lengths", "96", "192", "--budget", "16", "--chunk", "32"]
    command += ["--methods", "full", "streaming", "--sink", "2", "--window", "4", "--new-tokens", "2", *GEOMETRY]
    command += ["--out", str(out)]
    command += ["--plot", str(tmp_path / "plot.png")]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=600)
    rows = {(row["method"], row["prompt_tokens"]): row for row in map(json.loads, out.read_text().splitlines())}
    token_bytes = 2 * 2 * 16 * 4  # keys and values, 2 KV heads, head_dim 16, float32
    for length in (96, 192):
        assert rows["full", length]["peak_kv_bytes"] == 2 * length * token_bytes
        assert rows["streaming", length]["peak_kv_bytes"] <= (2 * 16 + 32) * token_bytes
        assert all(rows[method, length]["decode_ms_per_token"] > 0 for method in ("full", "streaming"))
    assert (tmp_path / "plot.png").stat().st_size > 0
