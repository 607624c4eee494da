"""The local `evaluate` metric modules, on hand-computed values."""

import pytest

from lookahead_cache.evaluation.metrics import METRIC_NAMES, load_metric, score


def compute(name, predictions, references):
    return load_metric(name).compute(predictions=predictions, references=references)


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_exact_prediction_scores_one_and_empty_prediction_zero(name):
    result = compute(name, ["return value + 1", ""], [["return value + 1"], ["return value + 1"]])
    assert result == {"score": 0.5, "scores": [1.0, 0.0]}


def test_string_match_is_the_fraction_of_references_found_ignoring_case():
    result = compute(
        "string_match",
        ["The numbers are 1234567 and 7654321.", "PARIS", "nothing here"],
        [["1234567", "7654321", "1111111", "2222222"], ["paris"], ["1234567"]],
    )
    assert result["scores"] == [0.5, 1.0, 0.0]
    assert result["score"] == pytest.approx(0.5)


def test_token_f1_normalises_like_squad_and_keeps_the_best_reference():
    # "the answer is paris." -> [answer, is, paris] against [paris]: precision 1/3, recall 1, F1 = 0.5.
    # [new, york, city] against [new, york]: precision 2/3, recall 1, F1 = 0.8; against [boston]: 0.
    scores = score("token_f1", ["The answer is Paris.", "new york city"], [["Paris"], ["Boston", "New York"]])
    assert scores == pytest.approx([0.5, 0.8])


def test_token_f1_of_empty_normalised_texts_is_one_only_when_both_are_empty():
    # SQuAD v2: "the" normalises to nothing, like the empty prediction.
    assert score("token_f1", ["", "An"], [["the"], ["Paris"]]) == [1.0, 0.0]


def test_edit_similarity_compares_the_first_code_line_of_the_prediction():
    # Fences, comments and blank lines are skipped; "return x + 1" vs "return x + 2": 1 edit over 12 characters.
    prediction = "```python\n\n# the next line\n    return x + 1\n```"
    assert score("edit_similarity", [prediction], [["return x + 2"]]) == pytest.approx([11 / 12])


def test_edit_similarity_is_one_minus_levenshtein_over_the_longer_length_best_reference_kept():
    # kitten -> sitting: 3 edits, 7 characters; the second reference matches exactly.
    assert score("edit_similarity", ["kitten", "kitten"], [["sitting"], ["sitting", "kitten"]]) == pytest.approx(
        [4 / 7, 1.0]
    )


def test_rouge_l_is_the_lcs_f_measure_on_lower_case_words():
    # LCS of "the cat sat on the mat" and "The cat is on the mat." is "the cat on the mat": 5 of 6 words each way.
    # Against "a dog": nothing in common; against "cat mat": LCS 2, precision 2/6, recall 1, F = 0.5.
    scores = score(
        "rouge_l",
        ["the cat sat on the mat", "the cat sat on the mat"],
        [["The cat is on the mat."], ["a dog", "cat mat"]],
    )
    assert scores == pytest.approx([5 / 6, 0.5])


def test_unknown_metric_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="Available metrics: string_match, token_f1, edit_similarity, rouge_l"):
        load_metric("bleu")


def test_prediction_without_references_is_refused():
    with pytest.raises(ValueError, match="at least one reference"):
        score("token_f1", ["Paris"], [[]])
