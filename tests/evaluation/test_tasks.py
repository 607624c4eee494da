"""The offline long-context task families, built with the embedded model's tokenizer (SmolLM2, 8k context)."""

import json
import re
from collections import Counter

import pytest
import torch

from lookahead_cache.evaluation.metrics import METRIC_NAMES
from lookahead_cache.evaluation.tasks import EXTRA_TASKS, TASKS, Sample, get_task
from lookahead_cache.evaluation.tasks._stdlib import STDLIB
from lookahead_cache.evaluation.tasks.code_continuation import TRIVIAL
from lookahead_cache.evaluation.tasks.few_shot_classification import LABELS

# Every family builds in about a second at 4096 and 8192 tokens, 25 s for all of them: those lengths are slow.
LENGTHS = [1024, *(pytest.param(length, marks=pytest.mark.slow) for length in (2048, 4096, 8192))]
NUM_SAMPLES = 2


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gguf")
    from lookahead_cache.default_model import load_default_tokenizer

    return load_default_tokenizer()


@pytest.fixture(scope="module")
def built(tokenizer):
    """`built(family, length)`: the samples of one build (seed 0), built once for all the tests of the module."""
    cache = {}

    def get(family: str, length: int) -> list[Sample]:
        if (family, length) not in cache:
            cache[family, length] = get_task(family).build(tokenizer, length, NUM_SAMPLES, seed=0)
        return cache[family, length]

    return get


def context_text(sample: Sample, tokenizer) -> str:
    context_ids, _ = sample.prompt_ids(tokenizer)
    return tokenizer.decode(context_ids[0])


def test_registry_names_match_families_and_declare_metric_and_answer_budget():
    assert len(TASKS) == 14
    for name, family in TASKS.items():
        assert family.name == name
        assert family.metric in METRIC_NAMES
        # Short answers, but for the long answers of the long-output mode.
        assert 0 < family.max_new_tokens <= (1024 if name in EXTRA_TASKS else 128)
        assert family.description and "\n" not in family.description
        assert isinstance(get_task(name), family)


def test_unknown_task_name_lists_the_available_ones():
    with pytest.raises(ValueError, match=r"Unknown task 'niah_single_4'\. Suite families: niah_single_noise, "):
        get_task("niah_single_4")


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("family", TASKS)
def test_prompt_fills_95_to_100_percent_and_splits_into_context_then_question(tokenizer, built, family, length):
    samples = built(family, length)
    assert [sample.index for sample in samples] == list(range(NUM_SAMPLES))
    assert samples[0] != samples[1]
    for sample in samples:
        context_ids, question_ids = sample.prompt_ids(tokenizer)
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{sample.context}\n\n{sample.question}"}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        assert torch.equal(torch.cat([context_ids, question_ids], dim=-1), prompt)
        assert 0.95 * length <= prompt.shape[-1] <= length
        assert sample.question not in sample.context
        assert tokenizer.decode(context_ids[0]).endswith(sample.context[-50:])
        assert tokenizer.decode(question_ids[0]).startswith(f"\n\n{sample.question}")
        assert (sample.family, sample.context_length, sample.metric) == (family, length, TASKS[family].metric)
        assert sample.id == f"{family}/{length}/{sample.index}"
        assert sample.answers and all(sample.answers)


@pytest.mark.parametrize("family", TASKS)
def test_same_seed_gives_same_samples_whatever_their_number_and_other_seed_others(tokenizer, built, family):
    task = get_task(family)
    assert task.build(tokenizer, 1024, 1, seed=0) == built(family, 1024)[:1]
    assert task.build(tokenizer, 1024, 1, seed=1)[0] != built(family, 1024)[0]


@pytest.mark.parametrize("family", TASKS)
def test_sample_round_trips_through_json(built, family):
    sample = built(family, 1024)[0]
    assert Sample.from_dict(json.loads(json.dumps(sample.to_dict()))) == sample


@pytest.mark.parametrize("family", TASKS)
def test_too_small_length_raises_with_the_fix(tokenizer, family):
    with pytest.raises(ValueError, match="too small.*Use a longer context_length"):
        get_task(family).build(tokenizer, 48, 1)


@pytest.mark.parametrize(
    "family", ["niah_single_essay", "few_shot_classification", "code_continuation", "code_continuation_long", "summary"]
)
def test_length_beyond_the_text_available_raises_with_the_fix(tokenizer, family):
    with pytest.raises(ValueError, match="exceed.*shorter"):
        get_task(family).build(tokenizer, 100_000, 1)


# What makes each answer right, checked on the decoded context ids (the part a question-agnostic run compresses).

NEEDLE = re.compile(r"One of the special magic (?:numbers|uuids) for (\S+) is: (\S+)\.")


@pytest.mark.parametrize("length", [1024, 2048])
@pytest.mark.parametrize(
    "family",
    [
        "niah_single_noise",
        "niah_single_essay",
        "niah_single_uuid",
        "niah_multikey",
        "niah_multivalue",
        "niah_multiquery",
    ],
)
def test_niah_answers_are_the_needle_values_of_the_keys_asked(tokenizer, built, family, length):
    task = TASKS[family]
    for sample in built(family, length):
        needles = NEEDLE.findall(context_text(sample, tokenizer))
        assert len(needles) == task.num_keys * task.num_values
        asked = {key for key, _ in needles if key in sample.question}
        assert len(asked) == task.num_queries
        assert sorted(sample.answers) == sorted(value for key, value in needles if key in asked)


@pytest.mark.parametrize("length", [1024, 2048])
def test_variable_tracking_answers_are_the_variables_the_chain_assigns_the_value(tokenizer, built, length):
    for sample in built("variable_tracking", length):
        value = re.search(r"the value (\d+)", sample.question).group(1)
        resolved = {}
        for name, source in re.findall(r"VAR (\w+) = (?:VAR )?(\w+)", context_text(sample, tokenizer)):
            resolved[name] = resolved.get(source, source)
        assert sorted(name for name, result in resolved.items() if result == value) == sorted(sample.answers)


# From 4096 tokens on, RULER repeats the common words 30 times and the others 3.
@pytest.mark.parametrize("length", [1024, 2048, pytest.param(4096, marks=pytest.mark.slow)])
def test_common_words_answers_are_strictly_the_most_frequent_list_entries(tokenizer, built, length):
    for sample in built("common_words", length):
        counts = Counter(re.findall(r"\d+\. (\w+)", context_text(sample, tokenizer)))
        others = [count for word, count in counts.items() if word not in sample.answers]
        assert len(sample.answers) == 10
        assert min(counts[word] for word in sample.answers) > max(others)


@pytest.mark.parametrize("length", [1024, 2048])
def test_frequent_words_answers_are_the_three_most_frequent_coded_words(tokenizer, built, length):
    for sample in built("frequent_words", length):
        counts = Counter(word for word in context_text(sample, tokenizer).split() if re.fullmatch("[a-z]{6}", word))
        ranked = counts.most_common(4)
        assert [word for word, _ in ranked[:3]] == list(sample.answers)
        assert ranked[2][1] > ranked[3][1]


@pytest.mark.parametrize("length", [1024, 2048])
def test_doc_qa_answer_is_the_default_in_the_signature_of_the_function_asked(tokenizer, built, length):
    for sample in built("doc_qa", length):
        parameter, function = re.search(r"`(\w+)` parameter of `([\w.]+)`", sample.question).groups()
        (answer,) = sample.answers
        entries = [line for line in context_text(sample, tokenizer).splitlines() if line.startswith(f"{function}(")]
        assert len(entries) == 1
        assert re.search(rf"\b{parameter}={re.escape(answer)}[,)]", entries[0])


@pytest.mark.parametrize("length", [1024, 2048])
def test_code_continuation_answer_is_the_source_line_after_the_context(tokenizer, built, length):
    for sample in built("code_continuation", length):
        text = context_text(sample, tokenizer)
        module = re.search(r"`(\w+)\.py`", text).group(1)
        code = text.split("```python\n", 1)[1].removesuffix("\n```")
        source = (STDLIB / f"{module}.py").read_text(encoding="utf-8")
        assert source.startswith(code + "\n")
        (answer,) = sample.answers
        assert source[len(code) + 1 :].splitlines()[0].strip() == answer
        assert not TRIVIAL.fullmatch(answer)


@pytest.mark.parametrize("length", [1024, 2048])
def test_few_shot_answer_is_the_held_out_docstring_module_among_labelled_examples(tokenizer, built, length):
    for sample in built("few_shot_classification", length):
        text = context_text(sample, tokenizer)
        docstring = re.search(r"Docstring: (.*)\nModule:$", sample.question).group(1)
        assert sample.answers[0] in LABELS
        assert f"Docstring: {docstring}\n" not in text
        assert set(re.findall(r"^Module: (\w+)$", text, flags=re.MULTILINE)) == set(LABELS)


@pytest.mark.parametrize("length", [1024, 2048])
def test_summary_reference_is_a_module_docstring_missing_from_the_context(built, length):
    for sample in built("summary", length):
        (reference,) = sample.answers
        assert len(reference) >= 200
        assert reference not in sample.context
        assert reference.splitlines()[0] not in sample.context
