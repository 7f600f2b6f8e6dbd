"""Scorers and IFEval checkers on hand-made items with known scores."""

from __future__ import annotations

import pytest

from desta.evaluate import ifeval_checks, scorers

CHOICES = ["Electric guitar", "Acoustic guitar", "Piano", "Violin"]


@pytest.mark.parametrize(("prediction", "expected"), [
    ("Acoustic guitar", True),
    ("The answer is the acoustic guitar.", True),  # extra words are fine if none belongs only to a wrong choice
    ("guitar", False),  # misses "acoustic"
    ("Acoustic or electric guitar", False),  # "electric" belongs to a wrong choice
    ("piano", False),
    ("", False),  # empty prediction is wrong
    ("ACOUSTIC GUITAR!!", True),  # case and punctuation do not matter
])
def test_mmau_string_match_official_rule(prediction, expected):
    assert scorers.mmau_string_match("Acoustic guitar", prediction, CHOICES) is expected


def test_mmau_shared_tokens_between_answer_and_choices_are_allowed():
    # "guitar" is in the answer, so it is not a wrong-choice token even though "Electric guitar" contains it
    assert scorers.mmau_string_match("Electric guitar", "electric guitar", CHOICES)
    assert not scorers.mmau_string_match("Yes", "yes and no", ["Yes", "No"])


GENDER = {"female": ("woman", "girl"), "male": ("man", "boy")}


@pytest.mark.parametrize(("prediction", "options", "named"), [
    ("The speaker is a woman.", ["Female", "Male"], ["Female"]),  # alias
    ("The speaker is female.", ["Male", "Female"], ["Female"]),  # "male" is not a word of "female"
    ("A male voice, or maybe a female one.", ["Female", "Male"], ["Female", "Male"]),  # hedging names both
    ("Birds chirping over an alarm beeping", ["bird chirps", "alarm beeps", "siren"], ["bird chirps", "alarm beeps"]),
    ("an engine humming at low speed", ["engine hum", "rain", "clock ticking"], ["engine hum"]),  # stems
    ("a ticking clock", ["clock ticking", "rain"], ["clock ticking"]),  # word order is free
    ("Traffic noises and horses.", ["traffic noise", "horse", "rain"], ["traffic noise", "horse"]),  # plural of -e
    ("Two boxes, slowly moved.", ["box", "slow", "fast"], ["box", "slow"]),
    ("Her voice is very high.", ["High", "Very high", "Low"], ["Very high"]),  # the longer option wins
    ("The pitch is high.", ["High", "Very high", "Low"], ["High"]),
    ("It is in the key of C.", ["C", "D"], []),  # one-letter options cannot be told from words
    ("I cannot tell.", ["Female", "Male"], []),
])
def test_named_options_in_free_answers(prediction, options, named):
    assert scorers.named_options(prediction, options, GENDER) == named


def test_p_above_chance_is_the_exact_guessing_tail():
    from math import comb

    assert scorers.p_above_chance([1, 1], [0.5, 0.5]) == pytest.approx(0.25)
    assert scorers.p_above_chance([0, 0, 0], [0.5, 0.25, 0.1]) == pytest.approx(1.0)
    assert scorers.p_above_chance([1, 0, 1], [0.5, 0.25, 1.0]) == pytest.approx(0.5 + 0.25 * 0.5)
    hits = [1.0] * 20 + [0.0] * 11
    assert scorers.p_above_chance(hits, [0.5] * 31) == pytest.approx(sum(comb(31, k) for k in range(20, 32)) / 2**31)
    with pytest.raises(ValueError, match="2 scores but 1 chance"):
        scorers.p_above_chance([1, 0], [0.5])


def test_strip_answer_prefix():
    assert scorers.strip_answer_prefix('The correct answer is: "Piano"') == "Piano"
    assert scorers.strip_answer_prefix("Well. the correct answer is: violin") == "violin"
    assert scorers.strip_answer_prefix("  Violin ") == "Violin"


def test_wer_known_values():
    assert scorers.wer(["the cat sat"], ["the cat sat"]) == 0.0
    assert scorers.wer(["the cat sat"], ["The cat, sat."]) == 0.0  # normalisation
    assert scorers.wer(["the cat sat down"], ["the dog sat"]) == pytest.approx(2 / 4)  # 1 sub + 1 del
    with pytest.raises(ValueError, match="empty"):
        scorers.wer(["..."], ["x"])


@pytest.mark.parametrize(("text", "expected"), [
    ("Explanation: picks (b).\nJudgement: correct", True),
    ("Explanation: wrong option.\nJudgement: incorrect", False),
    ("Judgment: **Correct**", True),
    ("CORRECT", True),
    ("The answer is correct but also incorrect", None),
    ("no idea", None),
    ("Explanation: steps shown.\nResult: YES", True),
    ("No.", False),
    ("", None),
])
def test_parse_judgement(text, expected):
    assert scorers.parse_judgement(text) is expected


def test_forgetting_rate_matches_readme_example():
    # Speech-IFEval README: DeSTA2 89.23 vs Llama3-8B-Instruct 92.53 -> -3.57 %
    assert scorers.forgetting_rate(89.23, 92.53) == pytest.approx(-0.0357, abs=5e-5)
    with pytest.raises(ValueError):
        scorers.forgetting_rate(0.5, 0.0)


def test_chance_level_and_grouping():
    assert scorers.chance_level([4, 4, 2]) == pytest.approx((0.25 + 0.25 + 0.5) / 3)
    recs = [{"g": "a", "correct": 1.0}, {"g": "a", "correct": 0.0}, {"g": "b", "correct": 1.0}, {"correct": 1.0}]
    assert scorers.accuracy_by(recs, "g") == {"a": 0.5, "b": 1.0}


@pytest.mark.parametrize(("response", "iid", "kwargs", "strict", "loose"), [
    ("the weather is lovely today and i will walk to the park with my dog.", "change_case:english_lowercase", {},
     True, True),
    ("The weather is lovely today.", "change_case:english_lowercase", {}, False, False),
    ('"I will be there soon, I promise you my friend."', "startend:quotation", {}, True, True),
    ("Sure!\n\"I will be there soon, I promise you.\"", "startend:quotation", {}, False, True),  # loose drops line 1
    ("One two three four five.", "length_constraints:number_words", {"relation": "less than", "num_words": 10},
     True, True),
    ("<<Rain>>\nIt rains.", "detectable_format:title", {}, True, True),
    ('{"answer": "female"}', "detectable_format:json_format", {}, True, True),
    ("Good night. Is there anything else I can help with?", "startend:end_checker",
     {"end_phrase": "Is there anything else I can help with?"}, True, True),
])
def test_ifeval_checkers_strict_and_loose(response, iid, kwargs, strict, loose):
    assert ifeval_checks.check(response, [iid], [kwargs]) == [strict]
    assert ifeval_checks.check(response, [iid], [kwargs], loose=True) == [loose]


def test_ifeval_unknown_id_and_mismatched_kwargs_fail_clearly():
    with pytest.raises(KeyError, match="unknown IFEval instruction id"):
        ifeval_checks.check("x", ["no:such_check"], [{}])
    with pytest.raises(ValueError, match="one to one"):
        ifeval_checks.check("x", ["change_case:english_lowercase"], [])


def test_ifeval_number_sentences_works_offline():
    ok = ifeval_checks.check("It rains. It pours. It stops.", ["length_constraints:number_sentences"],
                             [{"relation": "at least", "num_sentences": 3}])
    assert ok == [True]
