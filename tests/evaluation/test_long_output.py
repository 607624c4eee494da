"""Long answers: the `code_continuation_long` family and the `long-output` mode of `lookahead-cache eval`, each method
decoding a long answer with a fresh cache, as it is and with decode-time eviction (`<method>@decode`)."""

import json
import random
import re

import pytest

from lookahead_cache.cli import main
from lookahead_cache.evaluation.metrics import score
from lookahead_cache.evaluation.report import live_mode_comparisons
from lookahead_cache.evaluation.suite import answer_agreement, mode_configurations
from lookahead_cache.evaluation.tasks import SUITE_SPLIT, SUITE_TASKS, get_task, score_predictions
from lookahead_cache.evaluation.tasks._stdlib import STDLIB, parse
from lookahead_cache.evaluation.tasks.code_continuation import code_lines
from lookahead_cache.evaluation.tasks.code_continuation_long import REFERENCE_LINES, CodeContinuationLong, levenshtein

FAMILY = "code_continuation_long"
BUDGET = 64
# The least generation budget of the default cache: generation_interval 32 + window 32. Answers of ANSWER_TOKENS
# tokens fill it, are evicted down to 32 generated tokens, and fill it again.
GENERATION_BUDGET = 64
ANSWER_TOKENS = 100


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gguf")
    from lookahead_cache.default_model import load_default_tokenizer

    return load_default_tokenizer()


@pytest.mark.parametrize("length", [1024, 2048])
def test_the_family_asks_for_the_60_lines_after_the_context_at_the_asked_length(tokenizer, length):
    samples = get_task(FAMILY).build(tokenizer, length, 2, seed=0)
    assert samples == get_task(FAMILY).build(tokenizer, length, 2, seed=0)
    for sample in samples:
        context_ids, question_ids = sample.prompt_ids(tokenizer)
        assert 0.95 * length <= context_ids.shape[-1] + question_ids.shape[-1] <= length
        assert (sample.metric, sample.max_new_tokens) == ("edit_similarity", 1024)
        assert f"next {REFERENCE_LINES} lines" in sample.question
        module = re.search(r"`(\w+)\.py`", sample.context).group(1)
        code = sample.context.split("```python\n", 1)[1].removesuffix("\n```")
        path = STDLIB / f"{module}.py"
        lines = path.read_text(encoding="utf-8").splitlines()
        cut = code.count("\n") + 1  # its lines, a last blank one included
        assert "\n".join(lines[:cut]) == code
        (reference,) = sample.answers
        # The lines as they are in the file, indentation included, mostly code.
        assert reference.split("\n") == lines[cut : cut + REFERENCE_LINES]
        assert sum(code_lines(parse(module, path), lines)[cut : cut + REFERENCE_LINES]) >= REFERENCE_LINES / 2


def test_the_samples_of_a_build_continue_distinct_modules(tokenizer):
    samples = get_task(FAMILY).build(tokenizer, 2048, 6, seed=0)
    modules = [re.search(r"`(\w+)\.py`", sample.context).group(1) for sample in samples]
    assert len(set(modules)) == len(modules)


def test_only_named_runs_take_the_family():
    assert FAMILY not in SUITE_TASKS
    assert sorted(SUITE_TASKS) == sorted(name for names in SUITE_SPLIT.values() for name in names)


def test_the_family_scores_whole_answers_where_the_metric_reads_one_line():
    reference = "def f(x):\n    y = x + 1\n    return y"
    # The metric module reads the first line of code of a prediction (LongBench's next-line score).
    assert score("edit_similarity", [reference], [[reference]])[0] < 0.5
    fenced = f"```python\n\n{reference}\n```\nThat is the code."
    wrong = reference.replace("x + 1", "x + 2")
    longer = "\n".join([reference] * 30)
    family = CodeContinuationLong()
    scores = family.score([fenced, wrong, "", longer], [[reference]] * 4)
    assert scores[:3] == [1.0, pytest.approx(1 - 1 / len(reference)), 0.0]
    # Lines beyond the reference's 60 are not read: 60 of the 90 lines are compared.
    assert scores[3] == pytest.approx(len(reference) / len("\n".join([reference] * 20)))
    # Rows are scored by their family: this one whole, code_continuation's by their first line.
    assert score_predictions(FAMILY, "edit_similarity", [fenced], [[reference]]) == [1.0]
    first_line = len("def f(x):") / len(reference)
    assert score_predictions("code_continuation", "edit_similarity", [fenced], [[reference]]) == [first_line]


def test_the_bit_parallel_edit_distance_is_the_metrics():
    from lookahead_cache.evaluation.metrics.edit_similarity.edit_similarity import levenshtein as metric_levenshtein

    generator = random.Random(0)
    for alphabet in ("ab", "abcde \n", "é€x𝄞"):
        for _ in range(300):
            a, b = ("".join(generator.choices(alphabet, k=generator.randint(0, 80))) for _ in range(2))
            assert levenshtein(a, b) == metric_levenshtein(a, b)
    assert levenshtein("kitten", "sitting") == 3 and levenshtein("", "abc") == levenshtein("abc", "") == 3


def test_agreement_is_the_common_prefix_over_the_plain_answer():
    import torch

    plain = torch.tensor([[5, 6, 7, 8]])
    assert answer_agreement(plain, plain) == 1.0
    assert answer_agreement(torch.tensor([[5, 6, 9, 8, 1]]), plain) == 0.5
    assert answer_agreement(torch.tensor([[5, 6]]), plain) == 0.5
    assert answer_agreement(torch.tensor([[1]]), plain) == 0.0


def test_every_method_runs_as_it_is_and_with_a_generation_budget():
    configurations = mode_configurations("long-output", ["full", "snapkv", "lookahead"], (64, 128))
    assert configurations == [
        ("full", None),
        ("snapkv", 64),
        ("snapkv", 128),
        ("snapkv@decode", 64),
        ("snapkv@decode", 128),
        ("lookahead", 64),
        ("lookahead", 128),
        ("lookahead@decode", 64),
        ("lookahead@decode", 128),
    ]


def eval_argv(model_dir, out, methods=("full", "snapkv"), generation_budget=GENERATION_BUDGET, extra=()):
    return [
        "eval",
        "--model",
        str(model_dir),
        "--tasks",
        FAMILY,
        "--lengths",
        "512",
        "--samples",
        "1",
        "--budgets",
        str(BUDGET),
        "--methods",
        *methods,
        "--modes",
        "long-output",
        "--generation-budget",
        str(generation_budget),
        "--out",
        str(out),
        *extra,
    ]


def read_rows(out):
    return {row["method"]: row for row in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


@pytest.mark.slow
def test_a_generation_budget_bounds_the_cache_after_a_long_answer_resumes_and_is_reported(
    tiny_model_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(CodeContinuationLong, "max_new_tokens", ANSWER_TOKENS)
    out = tmp_path / "eval"
    argv = eval_argv(tiny_model_dir, out)
    assert main(argv) == 0
    rows = read_rows(out)
    assert set(rows) == {"full", "snapkv", "snapkv@decode"}
    full, plain, decoding = rows["full"], rows["snapkv"], rows["snapkv@decode"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["max_new_tokens"] == ANSWER_TOKENS
    assert (plain["generation_budget"], decoding["generation_budget"], full["generation_budget"]) == (None, 64, None)
    # Both read the prompt the same way: the budget's tokens once it was read.
    assert plain["kept_tokens"] == decoding["kept_tokens"] == BUDGET
    # The answer ran long enough to evict: kept whole, it outgrows budget + generation budget; evicted, it does not.
    assert decoding["kept_after_answer"] <= BUDGET + GENERATION_BUDGET < plain["kept_after_answer"]
    # Every generated token but the last (never fed) is kept without a generation budget.
    assert full["kept_after_answer"] == full["prompt_tokens"] + plain["kept_after_answer"] - BUDGET
    assert plain["agreement"] is None and full["agreement"] is None
    assert 0.0 <= decoding["agreement"] <= 1.0
    assert json.loads((out / "settings.json").read_text())["generation_budget"] == GENERATION_BUDGET
    summary = (out / "summary.md").read_text()
    assert "long output: generated tokens kept against a generation budget, 512 tokens" in summary
    assert re.search(r"\| 128 \(64 \+ 64\) +\|", summary)

    assert main(argv) == 0  # resumed: every row is there already
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 3
    with pytest.raises(ValueError, match="--generation-budget 64; this call has --generation-budget 128"):
        main(eval_argv(tiny_model_dir, out, generation_budget=128))


@pytest.mark.parametrize("method", ["oracle", "laq"])
def test_methods_that_need_a_recorded_prefill_are_refused_before_any_sample(tiny_model_dir, tmp_path, capsys, method):
    out = tmp_path / "eval"
    with pytest.raises(SystemExit):
        main(eval_argv(tiny_model_dir, out, methods=("full", method)))
    error = capsys.readouterr().err
    assert f"--methods {method} cannot run in --modes long-output" in error and "queries of future tokens" in error
    assert "use streaming, knorm, random, snapkv, pyramidkv, adakv" in error
    assert not out.exists()


def test_a_generation_budget_the_cache_cannot_keep_is_refused_before_any_sample(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    with pytest.raises(SystemExit):
        main(eval_argv(tiny_model_dir, out, generation_budget=48))
    error = capsys.readouterr().err
    assert "--methods snapkv cannot run in --modes long-output" in error
    assert "generation_budget=48 must hold generation_interval (32) + window (32)" in error
    assert "No method can with --budgets 64 --generation-budget 48" in error
    assert not out.exists()


def row(sample, method, score, budget=BUDGET, **extra):
    return {
        "sample_id": f"f/512/{sample}",
        "family": "f",
        "context_length": 512,
        "mode": "long-output",
        "method": method,
        "budget": budget,
        "score": score,
        **extra,
    }


def test_the_report_pairs_kept_and_evicted_answers_beside_the_bound():
    rows = [row(i, "full", 1.0, budget=None, kept_after_answer=1500.0) for i in range(2)]
    rows += [row(i, "snapkv", 0.5, kept_after_answer=1064.0, generation_budget=None, agreement=None) for i in range(2)]
    rows += [
        row(i, "snapkv@decode", 0.25, kept_after_answer=300.0 + 2 * i, generation_budget=256, agreement=0.5 * i)
        for i in range(3)
    ]
    text = live_mode_comparisons(rows)
    assert "### long output: generated tokens kept against a generation budget, 512 tokens" in text
    line = next(line for line in text.splitlines() if line.startswith("| snapkv"))
    assert [cell.strip() for cell in line.split("|")[2:-1]] == [
        "64",
        "2",
        "50.0 [50.0, 50.0]",
        "25.0 [25.0, 25.0]",
        "-25.0 [-25.0, -25.0]",
        "0.25",
        "1064 / 301",
        "320 (64 + 256)",
    ]
    full = next(line for line in text.splitlines() if line.startswith("| full"))
    assert [cell.strip() for cell in full.split("|")[1:-1]] == ["full", "–", "2", "100.0 [100.0, 100.0]", *"–––"] + [
        "1500",
        "–",
    ]
