"""Evaluation report: loading predictions, summary statistics, markdown, plots and the results page."""

import json
import re
import sys
import types

import pytest

from lookahead_cache.evaluation.report import (
    AVERAGE,
    load_rows,
    lookahead_table,
    markdown_summary,
    plot_accuracy_vs_budget,
    plot_overhead,
    summarize,
    write_results_page,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def row(family="niah", index=0, method="snapkv", budget=256, score=1.0, mode="question-aware", length=2048, **fields):
    """One predictions.jsonl line; `score=None` leaves the score out, as the kvpress runner does."""
    result = {
        "sample_id": f"{family}/{length}/{index}",
        "family": family,
        "context_length": length,
        "mode": mode,
        "method": method,
        "budget": budget,
        "metric": "string_match",
        "prediction": "blue",
        "answers": ["blue"],
        "score": score,
        **fields,
    }
    if score is None:
        del result["score"]
    return result


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def entry(summary, **fields):
    (match,) = [e for e in summary if all(e[key] == value for key, value in fields.items())]
    return match


@pytest.fixture
def results_dir(tmp_path):
    """Two families, a full cache, two methods at two token budgets and one fraction, plus a bench and settings."""
    rows = []
    for family, count in (("niah", 6), ("qa", 4)):
        for i in range(count):
            rows.append(row(family, i, method="full", budget=None, score=1.0))
            for budget, hit in ((64, i % 2 == 0), (256, i != 0)):
                rows.append(row(family, i, method="snapkv", budget=budget, score=float(hit)))
                rows.append(row(family, i, method="streaming", budget=budget, score=float(hit and i % 3 == 0)))
            rows.append(row(family, i, method="snapkv", budget=0.5, score=float(i % 2)))
    write_jsonl(tmp_path / "predictions.jsonl", rows)
    (tmp_path / "settings.json").write_text(json.dumps({"model": "tiny", "torch": "2.13.0", "device": "cpu"}))
    bench = {"settings": {"model": "tiny", "budget": 256}, "results": []}
    for length in (2048, 4096):
        for cache, overhead, speedup in (("full", 0.0, 1.0), ("snapkv", 0.05, 1.4), ("streaming", 0.01, 1.5)):
            kept = length if cache == "full" else 256
            bench["results"].append(
                {
                    "length": length,
                    "cache": cache,
                    "kept_tokens_per_head": float(kept),
                    "prefill_s": 1.0 + overhead,
                    "prefill_s_runs": [1.0 + overhead],
                    "decode_ms_per_token": 10 / speedup,
                    "kv_bytes_after_prefill": kept * 1024,
                    "peak_kv_bytes": kept * 1024,
                    "peak_prefill_memory_bytes": None,
                    "prefill_overhead": overhead,
                    "decode_speedup": speedup,
                    "kv_ratio": kept / length,
                    "peak_kv_ratio": kept / length,
                    "peak_memory_ratio": None,
                }
            )
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    return tmp_path


def test_later_rows_replace_earlier_ones_for_the_same_sample_mode_method_and_budget(tmp_path):
    write_jsonl(
        tmp_path / "predictions.jsonl",
        [row(index=0, score=0.0), row(index=1, score=1.0), row(index=0, score=1.0), row(budget=128, score=0.0)],
    )
    rows = load_rows(tmp_path)
    assert sorted((r["sample_id"], r["budget"], r["score"]) for r in rows) == [
        ("niah/2048/0", 128, 0.0),
        ("niah/2048/0", 256, 1.0),
        ("niah/2048/1", 256, 1.0),
    ]


def test_token_budget_of_one_and_fraction_of_one_are_different_configurations(tmp_path):
    write_jsonl(tmp_path / "predictions.jsonl", [row(budget=1, score=0.0), row(budget=1.0, score=1.0)])
    assert sorted((type(r["budget"]).__name__, r["score"]) for r in load_rows(tmp_path)) == [
        ("float", 1.0),
        ("int", 0.0),
    ]


def test_other_prediction_files_are_read_after_the_main_one(tmp_path):
    write_jsonl(tmp_path / "predictions-kvpress.jsonl", [row(method="kvpress-snapkv")])
    write_jsonl(tmp_path / "predictions.jsonl", [row(method="full", budget=None), row(method="snapkv")])
    assert [r["method"] for r in load_rows(tmp_path)] == ["full", "snapkv", "kvpress-snapkv"]


def test_missing_scores_are_computed_with_the_rows_metric_once_per_metric(tmp_path, monkeypatch):
    calls = []

    def score(name, predictions, references):
        calls.append((name, len(predictions)))
        return [float(p in refs) for p, refs in zip(predictions, references)]

    fake = types.ModuleType("lookahead_cache.evaluation.metrics")
    fake.score = score
    monkeypatch.setitem(sys.modules, "lookahead_cache.evaluation.metrics", fake)
    write_jsonl(
        tmp_path / "predictions-kvpress.jsonl",
        [
            row(index=0, score=None, prediction="blue"),
            row(index=1, score=None, prediction="red"),
            row(index=2, score=None, prediction="blue", metric="rouge"),
            row(index=3, score=0.25),
            {**row(index=4, score=None, prediction="blue"), "score": None},
        ],
    )
    assert [r["score"] for r in load_rows(tmp_path)] == [1.0, 0.0, 1.0, 0.25, 1.0]
    assert calls == [("string_match", 3), ("rouge", 1)]


def test_malformed_line_error_names_the_file_and_line(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(row()) + "\n\n" + '{"sample_id": "x", \n')
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: not valid JSON")):
        load_rows(tmp_path)


@pytest.mark.parametrize("budget", [0, -4, 1.5, True, "256"])
def test_invalid_budget_is_refused(tmp_path, budget):
    write_jsonl(tmp_path / "predictions.jsonl", [row(budget=budget)])
    with pytest.raises(ValueError, match=":1: budget"):
        load_rows(tmp_path)


def test_row_without_score_or_prediction_is_refused(tmp_path):
    bad = row(score=None)
    del bad["prediction"]
    write_jsonl(tmp_path / "predictions.jsonl", [bad])
    with pytest.raises(ValueError, match="missing field.*prediction"):
        load_rows(tmp_path)


def test_directory_without_predictions_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="No predictions"):
        load_rows(tmp_path)


def test_summary_means_and_confidence_interval_contains_the_mean():
    rows = [row(index=i, score=float(i % 4 != 0)) for i in range(20)]
    (family, average) = summarize(rows)
    assert family["family"] == "niah" and family["n"] == 20 and family["mean"] == pytest.approx(0.75)
    assert 0 <= family["ci_low"] < family["mean"] < family["ci_high"] <= 1
    assert average["family"] == AVERAGE and average["mean"] == pytest.approx(0.75)


def test_confidence_interval_shrinks_with_more_samples():
    def width(n):
        (family, _) = summarize([row(index=i, score=float(i % 2)) for i in range(n)])
        return family["ci_high"] - family["ci_low"]

    assert width(10) > width(40) > width(160) > 0


def test_single_sample_has_no_interval_and_summary_is_deterministic():
    rows = [row(family="a", score=1.0), *[row(family="b", index=i, score=float(i % 2)) for i in range(5)]]
    summary = summarize(rows)
    single = entry(summary, family="a")
    assert single["n"] == 1 and single["ci_low"] is None and single["ci_high"] is None
    assert entry(summary, family=AVERAGE)["ci_low"] is None
    assert summarize(rows) == summary


def test_average_is_the_macro_mean_of_family_means():
    rows = [row(family="big", index=i, score=1.0) for i in range(9)]
    rows += [row(family="small", index=i, score=float(i == 0)) for i in range(3)]
    average = entry(summarize(rows), family=AVERAGE)
    assert average["mean"] == pytest.approx((1.0 + 1 / 3) / 2)
    assert average["n"] == 12
    assert average["ci_low"] <= average["mean"] <= average["ci_high"]


def test_group_averages_are_macro_means_over_their_families_and_columns_before_the_average():
    rows = [row(family="kept", index=i, score=float(i == 0)) for i in range(4)]
    rows += [row(family="trained_a", score=1.0), row(family="trained_b", index=1, score=0.0)]
    rows += [row(family="trained_b", index=2, score=1.0)]
    groups = {"held out": ["kept", "never_run"], "training": ["trained_a", "trained_b"]}
    summary = summarize(rows, groups=groups)
    assert entry(summary, family="average (held out)")["mean"] == pytest.approx(0.25)
    assert entry(summary, family="average (training)")["mean"] == pytest.approx((1.0 + 0.5) / 2)
    assert entry(summary, family=AVERAGE)["mean"] == pytest.approx((0.25 + 1.0 + 0.5) / 3)
    header = markdown_summary(summary).split("| method")[1].splitlines()[0]
    assert [c.strip() for c in header.split("|")][2:-1] == [
        "kept",
        "trained_a",
        "trained_b",
        "average (held out)",
        "average (training)",
        "average",
    ]
    # A group the table does not span adds nothing: one family alone, or every family of the table.
    only = summarize([row(family="kept")], groups=groups)
    assert [e["family"] for e in only] == ["kept", AVERAGE]
    with pytest.raises(ValueError, match="like the macro averages"):
        summarize([row(family="average (mine)")])


def test_lookahead_table_lists_held_out_families_and_means_over_held_out_training_and_all_families():
    rows = []
    for family, full, lookahead in (("kept", 1.0, 0.0), ("trained_a", 1.0, 1.0), ("trained_b", 0.0, 1.0)):
        rows.append(row(family=family, method="full", budget=None, score=full))
        rows.append(row(family=family, method="lookahead", budget=64, score=lookahead))
    table = lookahead_table(summarize(rows), held_out=["kept"], budgets=[64], methods=["lookahead"])
    lines = table.splitlines()
    assert lines[0] == "| family | full | lookahead 64 |"
    assert lines[2] == "| kept (held out) | 100.0 | 0.0 |"
    assert lines[3:] == [
        "| **mean, held out** (1) | **100.0** | **0.0** |",
        "| **mean, training families** (2) | **50.0** | **100.0** |",
        "| **mean, all families** (3) | **66.7** | **66.7** |",
    ]


def test_average_is_left_out_for_a_method_missing_a_family():
    rows = [row(family=f, index=i, method="full", budget=None) for f in ("a", "b") for i in range(2)]
    rows += [row(family="a", index=i) for i in range(2)]
    summary = summarize(rows)
    assert [e["method"] for e in summary if e["family"] == AVERAGE] == ["full"]


def test_summary_orders_modes_by_appearance_full_first_then_methods_by_appearance_and_budgets_ascending():
    rows = [row(method="streaming", budget=512), row(method="streaming", budget=64), row(method="knorm")]
    rows += [row(method="full", budget=None), row(method="snapkv", budget=0.25), row(mode="agnostic", length=1024)]
    order = [(e["mode"], e["method"], e["budget"]) for e in summarize(rows) if e["family"] != AVERAGE]
    assert order == [
        ("question-aware", "full", None),
        ("question-aware", "streaming", 64),
        ("question-aware", "streaming", 512),
        ("question-aware", "knorm", 256),
        ("question-aware", "snapkv", 0.25),
        ("agnostic", "snapkv", 256),
    ]


def test_markdown_has_a_table_per_mode_and_length_with_family_columns(results_dir):
    rows = load_rows(results_dir)
    rows.append(row(mode="question-agnostic", length=4096))
    text = markdown_summary(summarize(rows))
    assert "### question-aware, 2048 tokens" in text and "### question-agnostic, 4096 tokens" in text
    aware = text.split("### question-aware, 2048 tokens")[1].splitlines()
    header = next(line for line in aware if line.startswith("| method"))
    assert [cell.strip() for cell in header.strip("|").split("|")] == ["method", "budget", "niah", "qa", AVERAGE]
    snapkv_256 = next(line for line in aware if re.match(r"\| snapkv +\| 256 ", line))
    niah = entry(summarize(rows), mode="question-aware", family="niah", method="snapkv", budget=256)
    expected = f"{100 * niah['mean']:.1f} [{100 * niah['ci_low']:.1f}, {100 * niah['ci_high']:.1f}] (n=6)"
    assert expected.startswith("83.3 [") and expected in snapkv_256
    assert re.search(r"\| full +\| – +\| 100\.0 \[100\.0, 100\.0\] \(n=6\)", text)
    assert "| 50% " in text


def test_plots_are_written_as_png_per_mode_length_and_budget_kind(results_dir, tmp_path):
    paths = plot_accuracy_vs_budget(summarize(load_rows(results_dir)), tmp_path / "figures")
    assert [p.name for p in paths] == ["accuracy_question-aware_2048.png", "accuracy_question-aware_2048_fraction.png"]
    overhead = plot_overhead(json.loads((results_dir / "bench.json").read_text()), tmp_path / "figures" / "o.png")
    for path in [*paths, overhead]:
        assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 1000


def test_results_page_has_command_settings_tables_bench_and_links_to_existing_figures(results_dir, tmp_path):
    page = write_results_page(results_dir, tmp_path / "docs" / "results.md", command="lookahead-cache eval --x 1")
    text = page.read_text()
    assert "```bash\nlookahead-cache eval --x 1\n```" in text
    assert "| model   | tiny" in text and "| torch   | 2.13.0" in text
    for heading in ("## Settings", "### question-aware, 2048 tokens", "## Speed and memory", "## How to regenerate"):
        assert heading in text
    assert "+5.0%" in text and "1.40x" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert links == [
        "results/accuracy_question-aware_2048.png",
        "results/accuracy_question-aware_2048_fraction.png",
        "results/overhead.png",
    ]
    assert all((page.parent / link).stat().st_size > 0 for link in links)
    write_results_page(results_dir, page, command="lookahead-cache eval --x 1")
    assert page.read_text() == text


def test_eviction_cost_table_compares_build_time_with_prefill():
    from lookahead_cache.evaluation.report import eviction_cost_table

    rows = [
        {"context_length": 2048, "method": "laq", "prefill_s": 4.0, "compress_s": 2.0},
        {"context_length": 2048, "method": "laq", "prefill_s": 6.0, "compress_s": 4.0},
        {"context_length": 2048, "method": "kvpress-snapkv", "prefill_s": 5.0},
    ]
    table = eviction_cost_table(rows)
    assert "| 2048    | laq    | 2       | 5.00             | 3.000                | 60.0%           |" in table
    assert "kvpress" not in table
