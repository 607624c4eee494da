"""The live modes of `lookahead-cache eval`: streaming prefill (the prompt read in chunks) and sessions of three
turns, each method generating with a fresh cache, reported beside the one-shot modes."""

import json

import pytest
import torch
from conftest import decoder_input_lengths, prompt_ids, tiny_lookahead_model

from lookahead_cache import LookaheadCache
from lookahead_cache.cli import main
from lookahead_cache.evaluation.live import LiveRun
from lookahead_cache.evaluation.report import live_mode_comparisons

BUDGET = 64


def eval_argv(model_dir, out, *modes, methods=("full", "snapkv"), extra=()):
    return [
        "eval",
        "--model",
        str(model_dir),
        "--tasks",
        "niah_single_noise",
        "--lengths",
        "512",
        "--samples",
        "1",
        "--budgets",
        str(BUDGET),
        "--methods",
        *methods,
        "--modes",
        *modes,
        "--out",
        str(out),
        *extra,
    ]


def read_rows(out):
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def by_mode_and_method(rows):
    return {(row["mode"], row["method"]): row for row in rows}


def tokens_per_layer_and_head(model_dir, nbytes):
    """`nbytes` of keys and values in tokens per layer and KV head of the tiny float32 model."""
    config = json.loads((model_dir / "config.json").read_text())
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    return nbytes / (config["num_hidden_layers"] * config["num_key_value_heads"] * 2 * head_dim * 4)


@pytest.mark.slow
def test_chunked_modes_run_resume_refuse_another_chunk_size_and_are_reported(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    modes = ("question-aware", "question-agnostic", "chunked-question-aware", "chunked-question-agnostic")
    argv = eval_argv(tiny_model_dir, out, *modes, extra=("--chunk-size", "128"))
    assert main(argv) == 0
    rows = read_rows(out)
    assert len(rows) == 4 * 2
    found = by_mode_and_method(rows)
    for mode in ("chunked-question-aware", "chunked-question-agnostic"):
        live = found[(mode, "snapkv")]
        assert live["kept_tokens"] == BUDGET and live["compress_s"] is None
        # While a chunk goes through a layer, that layer holds at most budget + chunk tokens, the others their budget.
        assert tokens_per_layer_and_head(tiny_model_dir, live["peak_kv_bytes"]) <= BUDGET + 128
        # A full cache read in chunks is the full cache: the answer is the one-shot one.
        assert found[(mode, "full")]["prediction"] == found[(mode.removeprefix("chunked-"), "full")]["prediction"]
    assert json.loads((out / "settings.json").read_text())["chunk_size"] == 128
    summary = (out / "summary.md").read_text()
    assert "streaming prefill (chunked-question-aware against question-aware)" in summary
    assert "chunked - one-shot" in summary

    assert main(argv) == 0  # resumed: every row is there already
    assert len(read_rows(out)) == len(rows)
    with pytest.raises(ValueError, match="--chunk-size 128; this call has --chunk-size 256"):
        main(eval_argv(tiny_model_dir, out, *modes, extra=("--chunk-size", "256")))
    # A call without a chunked mode neither checks nor drops the recorded chunk size.
    assert main(eval_argv(tiny_model_dir, out, "question-aware", extra=("--chunk-size", "256"))) == 0
    assert json.loads((out / "settings.json").read_text())["chunk_size"] == 128


def test_a_streaming_factor_holds_more_while_streaming_and_a_resumed_run_keeps_it(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = eval_argv(tiny_model_dir, out, "chunked-question-aware", extra=("--chunk-size", "128"))
    assert main([*argv, "--streaming-factor", "2"]) == 0
    live = by_mode_and_method(read_rows(out))[("chunked-question-aware", "snapkv")]
    # The last chunk evicts to the budget. Before it every layer held up to twice the budget, and the one a chunk
    # went through a chunk more: per layer and KV head on average, more than budget + chunk / layers.
    assert live["kept_tokens"] == BUDGET
    layers = json.loads((tiny_model_dir / "config.json").read_text())["num_hidden_layers"]
    peak = tokens_per_layer_and_head(tiny_model_dir, live["peak_kv_bytes"])
    assert BUDGET + 128 / layers < peak <= 2 * BUDGET + 128 / layers
    assert json.loads((out / "settings.json").read_text())["streaming_factor"] == 2.0
    with pytest.raises(ValueError, match="--streaming-factor 2.0; this call has --streaming-factor 1.0"):
        main(argv)
    with pytest.raises(SystemExit):
        main([*eval_argv(tiny_model_dir, tmp_path / "other", "chunked-question-aware"), "--streaming-factor", "0.5"])
    assert "--streaming-factor 0.5 must be at least 1" in capsys.readouterr().err


def test_one_chunk_covering_the_prompt_gives_the_one_shot_answers(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    modes = ("question-aware", "chunked-question-aware", "question-agnostic", "chunked-question-agnostic")
    assert main(eval_argv(tiny_model_dir, out, *modes, extra=("--chunk-size", "4096"))) == 0
    found = by_mode_and_method(read_rows(out))
    for one_shot in ("question-aware", "question-agnostic"):
        replayed, live = found[(one_shot, "snapkv")], found[(f"chunked-{one_shot}", "snapkv")]
        assert live["prediction"] == replayed["prediction"]
        assert (live["kept_tokens"], live["kv_bytes"]) == (replayed["kept_tokens"], replayed["kv_bytes"])


@pytest.mark.parametrize(("scorer", "first_input"), [("lookahead", 32 + 5 + 4), ("snapkv", 32)])
def test_a_chunked_question_aware_run_tells_the_question_to_caches_that_take_one(scorer, first_input):
    """Its chunks before the last carry the question (5 tokens) before the lookahead rows (4); a heuristic scorer's
    cache reads the chunks alone."""
    model = tiny_lookahead_model()
    question = prompt_ids(5, seed=7)
    run = LiveRun(
        model=model,
        turns=[torch.cat([prompt_ids(96), question], dim=-1)],
        question_ids=question[:, :0],
        max_new_tokens=2,
        eos_token_id=None,
        chunk_size=32,
        chunked_question=question,
    )
    inputs, answer = decoder_input_lengths(
        model, lambda: run.answer(LookaheadCache(budget=24, scorer=scorer, sink=2, window=4))
    )
    assert inputs[0] == first_input
    assert answer.answer_ids.shape == (1, 2)


@pytest.mark.parametrize(
    ("method", "mode", "reason"),
    [
        ("adakv", "chunked-question-aware", "equal counts"),
        ("lukv", "chunked-question-agnostic", "equal counts"),
        ("oracle", "chunked-question-aware", "queries of future tokens"),
        ("laq", "session", "queries of future tokens"),
        ("lookahead-adakv", "session", "equal counts"),
    ],
)
def test_live_modes_refuse_what_their_caches_cannot_run_before_any_sample(
    tiny_model_dir, tmp_path, capsys, method, mode, reason
):
    out = tmp_path / "eval"
    with pytest.raises(SystemExit):
        main(eval_argv(tiny_model_dir, out, "question-aware", mode, methods=("full", method)))
    error = capsys.readouterr().err
    assert f"--methods {method} cannot run in --modes {mode}" in error and reason in error
    assert "use streaming, knorm, random, snapkv, pyramidkv, lookahead" in error
    assert not out.exists()


def test_live_modes_refuse_fractions_of_the_prompt(tiny_model_dir, tmp_path, capsys):
    argv = eval_argv(tiny_model_dir, tmp_path / "eval", "session")
    argv[argv.index(str(BUDGET))] = "0.5"
    with pytest.raises(SystemExit):
        main(argv)
    assert "--modes session needs --budgets in tokens: 0.5" in capsys.readouterr().err


def test_a_session_budget_stays_within_budget_plus_the_turn_and_an_unbounded_session_grows(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    page = tmp_path / "results.md"
    assert main(eval_argv(tiny_model_dir, out, "session", extra=("--results-page", str(page)))) == 0
    found = by_mode_and_method(read_rows(out))
    assert set(found) == {("session", "full"), ("session", "snapkv"), ("session", "snapkv@session")}
    unbounded, bounded = found[("session", "snapkv")], found[("session", "snapkv@session")]
    turn = bounded["turn_tokens"]
    assert 0 < turn == unbounded["turn_tokens"] and bounded["prompt_tokens"] > 512 * 0.95
    # The session budget goes back to the budget at every turn; while a turn goes through a layer, that layer holds
    # the budget and the turn.
    assert bounded["kept_tokens"] == BUDGET
    assert BUDGET < tokens_per_layer_and_head(tiny_model_dir, bounded["peak_kv_bytes"]) <= BUDGET + turn
    # Unbounded, the later turns are kept whole.
    assert tokens_per_layer_and_head(tiny_model_dir, unbounded["peak_kv_bytes"]) > BUDGET + turn
    assert unbounded["kept_tokens"] > BUDGET + turn
    assert found[("session", "full")]["kept_tokens"] == found[("session", "full")]["prompt_tokens"]
    summary = (out / "summary.md").read_text()
    assert "session: unbounded against session budget" in summary and "| snapkv " in summary
    assert "## Live modes beside the one-shot ones" in page.read_text()


def row(sample, mode, method, score, family="f", budget=BUDGET, **extra):
    return {
        "sample_id": f"{family}/512/{sample}",
        "family": family,
        "context_length": 512,
        "mode": mode,
        "method": method,
        "budget": budget,
        "score": score,
        **extra,
    }


def test_comparisons_pair_samples_and_difference_their_scores():
    rows = [row(i, "question-aware", "snapkv", 0.5) for i in range(4)]
    rows += [row(i, "chunked-question-aware", "snapkv", 0.25 + 0.5 * (i % 2)) for i in range(3)]
    footprint = dict(kept_tokens=64.0, kv_bytes=64 * 512, peak_kv_bytes=90 * 512, turn_tokens=30)
    rows += [row(i, "session", "knorm", 1.0, **footprint) for i in range(2)]
    rows += [row(i, "session", "knorm@session", 0.0, **footprint) for i in range(2)]
    text = live_mode_comparisons(rows)
    chunked = next(line for line in text.splitlines() if line.startswith("| snapkv"))
    # Three samples both modes have: one-shot 50.0, chunked (25 + 75 + 25) / 3, difference -8.3.
    assert [cell.strip() for cell in chunked.split("|")[2:4]] == ["64", "3"]
    assert "50.0 [50.0, 50.0]" in chunked and "| 41.7 [" in chunked and "-8.3 [" in chunked
    session = next(line for line in text.splitlines() if line.startswith("| knorm"))
    assert [cell.strip() for cell in session.split("|")[3:-1]] == [
        "2",
        "100.0 [100.0, 100.0]",
        "0.0 [0.0, 0.0]",
        "-100.0 [-100.0, -100.0]",
        "64 / 64",
        "90 / 90",
        "94 (64 + 30)",
    ]
    assert live_mode_comparisons([row(0, "question-aware", "snapkv", 0.5)]) == ""


def test_a_session_is_the_chat_prompt_cut_at_each_turn():
    pytest.importorskip("gguf")
    from lookahead_cache.default_model import load_default_tokenizer
    from lookahead_cache.evaluation.tasks.base import SESSION_ACKNOWLEDGEMENT, SESSION_FILLERS, Sample

    tokenizer = load_default_tokenizer()
    sample = Sample("family", 512, 1, "The code is 4417.", "What is the code?", ("4417",), "string_match", 8)
    turns = sample.session_ids(tokenizer)
    assert len(turns) == 3 and all(turn.shape[0] == 1 for turn in turns)
    texts = [tokenizer.decode(turn[0]) for turn in turns]
    assert "The code is 4417." in texts[0] and texts[0].rstrip().endswith(f"{SESSION_ACKNOWLEDGEMENT}<|im_end|>")
    assert SESSION_FILLERS[1][0] in texts[1] and SESSION_FILLERS[1][1] in texts[1]
    assert "What is the code?" in texts[2] and texts[2].endswith("assistant\n")
