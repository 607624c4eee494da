"""The task forms of the training mix: every one builds at every default length, deterministically, and none shares
a generator with the suite's held-out families."""

import ast
import importlib
from pathlib import Path

import pytest

from lookahead_cache.evaluation.tasks import HELD_OUT_TASKS, SUITE_TASKS, TASKS
from lookahead_cache.training.config import TrainingConfig
from lookahead_cache.training.forms import FORMS, get_task

MIX = TrainingConfig().tasks


@pytest.fixture(scope="module")
def tokenizer():
    pytest.importorskip("gguf")
    from lookahead_cache.default_model import load_default_tokenizer

    return load_default_tokenizer()


def test_the_default_mix_has_twenty_forms_and_no_held_out_family():
    assert len(MIX) == len(set(MIX)) >= 20
    assert not set(MIX) & set(HELD_OUT_TASKS)
    # Every suite family is held out or trained on; extra families (long outputs) are neither.
    assert set(HELD_OUT_TASKS) | set(MIX) >= set(SUITE_TASKS)


@pytest.mark.parametrize("name", MIX)
def test_forms_build_at_the_shortest_and_longest_default_lengths_deterministically(tokenizer, name):
    task = get_task(name)
    for length in (min(TrainingConfig().lengths), max(TrainingConfig().lengths)):
        (sample,) = task.build(tokenizer, length, 1, seed=1000)
        context_ids, question_ids = sample.prompt_ids(tokenizer)
        assert 0.95 * length <= context_ids.shape[-1] + question_ids.shape[-1] <= length
        assert sample.question and sample.question not in sample.context
        assert sample.answers and all(answer.strip() for answer in sample.answers)
        assert task.build(tokenizer, length, 1, seed=1000) == [sample]
    other = task.build(tokenizer, min(TrainingConfig().lengths), 2, seed=1000)[1]
    assert other.context != sample.context


def imported_modules(path: Path) -> set[str]:
    """The modules a source file imports, relative ones by their last component."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add((node.module or "").rsplit(".", 1)[-1])
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name.rsplit(".", 1)[-1] for alias in node.names)
    return names


@pytest.mark.parametrize("name", MIX)
def test_no_form_of_the_mix_uses_a_held_out_familys_generator(name):
    registry = FORMS if name in FORMS else TASKS
    module_name, _ = registry._classes[name].split(":")
    module = importlib.import_module(module_name, registry._package)
    held_out_modules = {"_niah", "NeedleInAHaystack", *HELD_OUT_TASKS}
    assert not imported_modules(Path(module.__file__)) & held_out_modules


def test_training_names_a_form_or_a_suite_family_and_lists_both_when_unknown():
    assert type(get_task("record_lookup")).__name__ == "RecordLookup"
    assert type(get_task("doc_qa")).__name__ == "DocQA"
    with pytest.raises(ValueError, match="Suite families: niah_single_noise, .*; training forms: record_lookup, "):
        get_task("niah_single_4")
