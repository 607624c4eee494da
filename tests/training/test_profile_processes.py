"""`lookahead-cache profile` under torchrun: two processes share the prompts and save the profile one process saves.

Run as a script, this file is the `profile` command with each prompt's tables file, as it is saved, logged with the
rank of the process saving it to the file named by `$PROFILE_WRITES`.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

PROMPTS = 5
TABLES = [f"prompt_{index:02d}.safetensors" for index in range(PROMPTS)]
PROFILE_FILES = ("lukv_profile_snapkv.json", "lukv_profile_snapkv.safetensors", "lukv_profile_snapkv.png")


def profile(model_dir, out, processes):
    """Run `profile` in `processes` processes; what it printed, and the (rank, file) of each table it saved."""
    argv = ["profile", "--model", str(model_dir), "--scorers", "snapkv", "--context-length", "400"]
    argv += ["--questions", str(PROMPTS), "--answer-tokens", "2", "--sink", "2", "--window", "4", "--out", str(out)]
    writes = out.with_name(out.name + ".writes")
    writes.unlink(missing_ok=True)
    # One thread a process in both runs: the same kernels on the same inputs give the same bits.
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PROFILE_WRITES": str(writes)}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes)]
    done = subprocess.run(launcher + [__file__, *argv], env=environment, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    saved = sorted(tuple(line.split()) for line in writes.read_text().splitlines()) if writes.exists() else []
    return done.stdout, saved


@pytest.mark.slow
def test_two_processes_share_the_prompts_and_save_the_one_process_profile(tiny_model_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    printed, saved = profile(tiny_model_dir, one, 1)
    assert saved == [("0", name) for name in TABLES]
    assert printed.count("snapkv: ") == 1

    printed, saved = profile(tiny_model_dir, two, 2)
    # Each prompt once, by the process its index falls to; the main process alone says where the profile is.
    assert saved == sorted((str(index % 2), name) for index, name in enumerate(TABLES))
    assert printed.count("snapkv: ") == 1
    assert json.loads((two / "calibration" / "settings.json").read_text()) == json.loads(
        (one / "calibration" / "settings.json").read_text()
    )
    # Exact: each prompt is profiled from the same seed by the same single-threaded kernels, whichever process runs it.
    for folder, files in (("calibration", TABLES), (".", PROFILE_FILES[1:2])):
        for name in files:
            expected, actual = (load_file(str(run / folder / name)) for run in (one, two))
            assert expected.keys() == actual.keys()
            for key in expected:
                assert torch.equal(expected[key], actual[key]), (name, key)
    assert json.loads((two / PROFILE_FILES[0]).read_text()) == json.loads((one / PROFILE_FILES[0]).read_text())
    assert all((two / name).is_file() for name in PROFILE_FILES)

    # Resumed with every table on disk, neither process profiles a prompt again.
    before = {name: (two / "calibration" / name).stat().st_mtime_ns for name in TABLES}
    printed, saved = profile(tiny_model_dir, two, 2)
    assert saved == []
    assert printed.count("snapkv: ") == 1
    assert {name: (two / "calibration" / name).stat().st_mtime_ns for name in TABLES} == before


def log_table_writes(log: Path) -> None:
    """Append `rank file` to `log` for each prompt's tables the profiler saves."""
    from lookahead_cache.profiling import profiler

    real_save = profiler.save_safetensors

    def logged(tensors, path, metadata=None):
        real_save(tensors, path, metadata=metadata)
        with log.open("a") as lines:
            lines.write(f"{os.environ.get('RANK', '0')} {Path(path).name}\n")

    profiler.save_safetensors = logged


if __name__ == "__main__":
    from lookahead_cache.cli import main

    log_table_writes(Path(os.environ["PROFILE_WRITES"]))
    sys.exit(main(sys.argv[1:]))


def test_each_process_places_its_own_model_and_a_shared_device_map_is_refused(monkeypatch, capsys):
    from lookahead_cache.cli import main
    from lookahead_cache.profiling.command import process_device_map

    assert process_device_map("cuda:1") == "cuda:1"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    expected = "cuda:1" if torch.cuda.is_available() else None
    assert process_device_map(None) == expected
    with pytest.raises(SystemExit):
        main(["profile", "--device-map", "auto", "--out", "unused"])
    assert "each process profiles on its own device" in capsys.readouterr().err
