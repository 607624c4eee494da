"""The `lookahead-cache` console script: its demo and benchmark on the embedded model, and its usage errors."""

import shutil
import subprocess
import sys

import pytest
import torch
from conftest import prompt_ids, tiny_model
from transformers import DynamicCache

from lookahead_cache import LookaheadCache
from lookahead_cache.cli import main
from lookahead_cache.evaluation.benchmark import run_benchmark
from lookahead_cache.evaluation.documents import build_needle_task, haystack_ids
from lookahead_cache.evaluation.timing import prefill_flops


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--budget", "0"], "budget"),
        (["demo", "--budget", "1.5"], "budget"),
        (["demo", "--scorer", "nope"], "nope"),
        (["bench", "--scorers", "snapkv", "snapkv"], "twice"),
        (["bench", "--lengths", "0"], "at least 1"),
        (["profile", "--scorers", "nope", "--out", "unused"], "invalid choice: 'nope'"),
        (["profile", "--temperature", "0", "--out", "unused"], "--temperature 0.0 must be positive"),
        (["profile", "--model", "my-model", "--scorers", "lookahead", "--out", "unused"], "needs --adapter"),
        (["eval", "--methods", "full", "lukv", "--model", "my-model", "--out", "unused"], "need --adapter"),
        (["train", "--lengths", "1024", "--out", "unused"], "--lengths 1024 are not the default lengths"),
        (["train", "--tasks", "niah_single_4", "--out", "unused"], "invalid choice: 'niah_single_4'"),
    ],
)
def test_bad_arguments_are_usage_errors_naming_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", [None, "demo", "bench", "eval", "train", "profile"])
def test_help_of_every_command_imports_neither_torch_nor_transformers(command):
    code = (
        "import sys\n"
        "from lookahead_cache.cli import main\n"
        "try:\n"
        f"    main({[command, '--help'] if command else ['--help']!r})\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print(sorted(name for name in ('torch', 'transformers', 'peft') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    help_text, imported = result.stdout.rsplit("\n", 2)[:2]
    assert imported == "[]"
    assert "usage: lookahead-cache" in help_text


def test_help_shows_defaults_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 512)" in text and "(default: 2000)" in text and "(default: 24)" in text
    assert "{auto,lookahead,snapkv,streaming,knorm,random}" in text and "(default: auto)" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Peak learning rate. (default: 0.001)" in text and "(default: 2)" in text


def test_a_command_whose_extra_is_not_installed_names_the_install_command(monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "evaluate" else find_spec(name, *args)
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--out", "unused"])
    assert exit_info.value.code == 2
    assert "needs evaluate" in (error := capsys.readouterr().err) and "pip install 'lookahead-cache[eval]'" in error


def test_version_names_the_package_and_its_libraries(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    output = capsys.readouterr().out
    assert output.startswith("lookahead-cache 0.1.0 (transformers ") and "peft " in output and "torch " in output


def test_command_line_choices_are_the_registries():
    from lookahead_cache.cli import ALLOCATION_CHOICES, SCORER_CHOICES
    from lookahead_cache.commands.eval import DEFAULT_METHODS, EXTRA_METHODS
    from lookahead_cache.evaluation.methods import METHODS
    from lookahead_cache.scorers import SCORERS

    assert set(SCORER_CHOICES) == {"auto", *SCORERS} - {"future_queries"}
    assert ALLOCATION_CHOICES == ["uniform", "pyramid", "adakv", "lukv"]
    assert sorted([*DEFAULT_METHODS, *EXTRA_METHODS]) == sorted(METHODS)
    # Both take the suite's families and the training mix's forms by name.
    from lookahead_cache.cli import build_parser
    from lookahead_cache.evaluation.tasks import TASKS
    from lookahead_cache.training.forms import FORMS

    for command in ("eval", "train"):
        _, commands = build_parser(command)
        (tasks,) = [action for action in commands[command]._actions if action.dest == "tasks"]
        assert tasks.choices == [*TASKS, *FORMS]


@pytest.mark.slow
def test_demo_console_script_compares_full_and_evicted_cache():
    executable = shutil.which("lookahead-cache")
    command = [executable] if executable else [sys.executable, "-m", "lookahead_cache.cli"]
    result = subprocess.run(
        [*command, "demo", "--context-tokens", "1000", "--budget", "128", "--max-new-tokens", "16", "--rounds", "1"],
        capture_output=True,
        text=True,
        # A warm-up and one round of both caches: four 1000-token prefills, slow on a CPU that other work shares.
        timeout=600,
        check=True,
    )
    table = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| ")]
    rows = {cells[0].strip(): [cell.strip() for cell in cells[1:]] for cells in table}
    # The demo's defaults are the library's: scorer auto, which the shipped adapter turns into the lookahead scorer.
    assert list(rows[""]) == [
        "DynamicCache (full)",
        "LookaheadCache(budget=128, scorer='auto' -> lookahead, allocation='uniform')",
    ]
    # The full cache finds the needle; whether the evicted one does is what the demo is there to show.
    code_row = next(cells for name, cells in rows.items() if name.startswith("code "))
    assert code_row[0] == "yes", result.stdout
    assert rows["prompt tokens"] == ["1000", "1000"]
    assert rows["prompt tokens kept per KV head"][1] == "128"
    full_mib, evicted_mib = (float(cell) for cell in rows["KV cache after generation (MiB)"])
    assert evicted_mib < full_mib / 4
    # The overhead is a median of per-round ratios, explained under the table so that no one reads it as a law.
    overhead = rows["prefill overhead over full cache"][1]
    assert overhead.endswith("%") and float(overhead.removesuffix("%")) > -100, overhead
    assert "Prefill overhead: the median of each round's" in result.stdout


@pytest.mark.slow
def test_needle_task_prompt_has_the_asked_length_and_hides_the_code(default_model):
    _, tokenizer = default_model
    task = build_needle_task(tokenizer, 1200, seed=3)
    ids = task.prompt_ids(tokenizer)
    assert abs(ids.shape[-1] - 1200) <= 8
    assert task.needle in tokenizer.decode(ids[0])
    assert task.is_answered_by(f"It is {task.code}.") and not task.is_answered_by("I do not know.")
    with pytest.raises(ValueError, match="exceeds"):
        haystack_ids(tokenizer, 10**6)


@pytest.mark.slow
def test_benchmark_rows_compare_against_the_full_cache(default_model):
    model, tokenizer = default_model
    prompts = {512: torch.tensor([haystack_ids(tokenizer, 512)])}
    rows = run_benchmark(model, prompts, budget=128, scorers=["snapkv", "streaming"], decode_tokens=3, repeats=1)
    by_cache = {row["cache"]: row for row in rows}
    assert list(by_cache) == ["full", "snapkv", "streaming"]
    assert by_cache["full"]["kept_tokens_per_head"] == 512
    assert by_cache["full"]["kv_ratio"] == 1.0
    for scorer in ("snapkv", "streaming"):
        row = by_cache[scorer]
        assert row["kept_tokens_per_head"] == 128
        assert row["kv_ratio"] == pytest.approx(128 / 512)
        # Per-layer eviction: prefill holds the compressed layers plus one whole layer, never all 30 whole.
        assert row["peak_kv_ratio"] == pytest.approx((29 * 128 + 512) / (30 * 512))
        assert row["decode_ms_per_token"] > 0 and row["prefill_s"] > 0
    # Streaming keeps sink and window without a product; snapkv computes its window's queries and their scores.
    assert by_cache["streaming"]["prefill_flops"] == by_cache["full"]["prefill_flops"]
    assert by_cache["snapkv"]["prefill_flops_overhead"] > 0


@pytest.mark.parametrize("attn_implementation, attended_pairs", [("sdpa", 80 * 81 // 2), ("eager", 80 * 80)])
def test_prefill_flops_count_every_product_of_the_prompt_forward(attn_implementation, attended_pairs):
    model = tiny_model(attn_implementation=attn_implementation)
    config, length = model.config, 80
    linear_weights = sum(m.weight.numel() for m in model.model.modules() if isinstance(m, torch.nn.Linear))
    head_dim = config.hidden_size // config.num_attention_heads
    # SDPA's causal CPU kernel skips the pairs above the diagonal; eager attention multiplies them all, then masks.
    attention = config.num_hidden_layers * config.num_attention_heads * attended_pairs * 2 * (2 * head_dim)
    lm_head_one_row = 2 * config.hidden_size * config.vocab_size
    expected = 2 * length * linear_weights + attention + lm_head_one_row
    flops = {
        name: prefill_flops(model, prompt_ids(length), cache)
        for name, cache in (
            ("full", DynamicCache()),
            ("streaming", LookaheadCache(budget=40, scorer="streaming")),
            ("snapkv", LookaheadCache(budget=40, scorer="snapkv")),
        )
    }
    assert flops["full"] == expected
    assert flops["streaming"] == expected  # keeps sink and window: no products
    assert flops["snapkv"] > expected  # its window queries and their scores


@pytest.mark.parametrize("queries, keys", [(5, 5), (3, 7), (7, 3)])
def test_causal_attention_flops_count_the_pairs_sdpa_aligns_top_left(queries, keys):
    from lookahead_cache.evaluation.timing import _attention_flops

    pairs = sum(1 for i in range(queries) for j in range(keys) if j <= i)
    shapes = (2, 3, queries, 4), (2, 1, keys, 4), (2, 1, keys, 4)
    assert _attention_flops(*shapes, is_causal=True) == 2 * 2 * 3 * pairs * 8
    assert _attention_flops(*shapes, is_causal=False) == 2 * 2 * 3 * queries * keys * 8


@pytest.mark.slow
def test_eval_runs_every_method_resumes_and_reports(tiny_model_dir, tmp_path):
    import json

    out = tmp_path / "eval"
    argv = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--tasks",
        "niah_single_noise",
        "few_shot_classification",
        "--lengths",
        "1024",
        "--samples",
        "2",
        "--budgets",
        "64",
        "0.1",
        "--methods",
        "full",
        "snapkv",
        "oracle",
        "laq",
        "--out",
        str(out),
        "--results-page",
        str(tmp_path / "docs" / "results.md"),
    ]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    # 2 families x 2 samples x (full + 3 methods x 2 budgets)
    assert len(rows) == 2 * 2 * 7
    assert {(row["method"], row["budget"]) for row in rows} >= {("full", None), ("oracle", 64), ("laq", 0.1)}
    assert all(0.0 <= row["score"] <= 1.0 for row in rows)
    kept = {row["kept_tokens"] for row in rows if row["budget"] == 64}
    assert kept == {64.0}
    # The full cache's footprint is the prompt's, taken before the cache grew by the answer.
    full_rows = [row for row in rows if row["method"] == "full" and row["mode"] == "question-aware"]
    assert full_rows and all(row["kept_tokens"] == row["prompt_tokens"] for row in full_rows)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(len(s["context_ids"]) + len(s["question_ids"]) <= 1024 for s in samples)
    assert "| full" in (out / "summary.md").read_text()
    assert (tmp_path / "docs" / "results.md").exists()

    # Rows made under another transformers stay credited to it when a later run adds to the directory.
    settings = json.loads((out / "settings.json").read_text())
    current = settings["transformers"]
    (out / "settings.json").write_text(json.dumps({**settings, "transformers": "5.0.0"}))
    assert main(argv) == 0  # everything is done already: nothing is appended
    assert len((out / "predictions.jsonl").read_text().splitlines()) == len(rows)
    assert json.loads((out / "settings.json").read_text())["transformers"] == ["5.0.0", current]


def test_eval_refuses_an_adapter_without_the_lukv_profile_before_any_sample(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from lookahead_cache.adapters import LookaheadConfig, add_lookahead, get_lookahead

    untrained = add_lookahead(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LookaheadConfig(num_tokens=4))
    get_lookahead(untrained).save_pretrained(tmp_path / "adapter")
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_model_dir), "--adapter", str(tmp_path / "adapter"), "--out", str(out)]
    with pytest.raises(FileNotFoundError, match="no LU-KV profile for scorer 'snapkv'"):
        main([*argv, "--methods", "full", "lookahead", "lukv"])
    assert not (out / "samples.jsonl").exists()


def test_eval_refuses_a_sweep_without_the_full_cache(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--methods", "snapkv", "--out", "unused"])
    assert "'full'" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_refuses_to_resume_lookahead_rows_with_another_adapter(tiny_model_dir, tmp_path):
    import json

    from transformers import AutoModelForCausalLM

    from lookahead_cache.adapters import LookaheadConfig, add_lookahead, get_lookahead

    for seed in (0, 1):
        torch.manual_seed(seed)
        untrained = add_lookahead(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LookaheadConfig(num_tokens=4))
        get_lookahead(untrained).save_pretrained(tmp_path / f"adapter{seed}")
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_model_dir), "--tasks", "niah_single_noise", "--lengths", "512"]
    argv += ["--samples", "1", "--budgets", "64", "--methods", "full", "snapkv", "lookahead", "--out", str(out)]
    assert main([*argv, "--adapter", str(tmp_path / "adapter0")]) == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    fingerprints = {row["method"]: row.get("adapter") for row in rows}
    assert fingerprints["full"] is None and fingerprints["snapkv"] is None
    assert len(fingerprints["lookahead"]) == 16

    with pytest.raises(
        ValueError, match=r"another lookahead adapter.*lookahead \(adapter " + fingerprints["lookahead"]
    ):
        main([*argv, "--adapter", str(tmp_path / "adapter1")])
    # Methods that do not score with the adapter resume under any adapter; the same adapter resumes everything.
    assert (
        main([*argv[:-6], "--methods", "full", "snapkv", "--out", str(out), "--adapter", str(tmp_path / "adapter1")])
        == 0
    )
    assert main([*argv, "--adapter", str(tmp_path / "adapter0")]) == 0
    assert len((out / "predictions.jsonl").read_text().splitlines()) == len(rows)
    # Rows made before adapters were recorded are refused too, with the same message.
    legacy = [{key: value for key, value in row.items() if key != "adapter"} for row in rows]
    (out / "predictions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in legacy))
    with pytest.raises(ValueError, match=r"lookahead \(adapter not recorded\)"):
        main([*argv, "--adapter", str(tmp_path / "adapter0")])
