"""VoiceBench's rule-based evaluators reproduced item by item: each case's expected verdict was produced by running
VoiceBench's own evaluator code (tests/data/parity/voicebench/README.md says how), never by this project."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from desta.evaluate.loop import run_task
from desta.evaluate.official import voicebench as official
from desta.evaluate.tasks.common import BenchmarkFilesError
from desta.evaluate.tasks.voicebench import VoiceBenchTask

CASES = json.loads((Path(__file__).resolve().parents[1] / "data" / "parity" / "voicebench" / "cases.json")
                   .read_text(encoding="utf-8"))


def ifeval_ours() -> list[tuple[list[bool], list[bool]]]:
    cases = CASES["ifeval"]["cases"]
    by_prompt = {c["prompt"]: official.clean_ifeval_response(c["response"]) for c in cases}  # last answer wins
    return [official.ifeval_verdicts(c["prompt"], by_prompt[c["prompt"]], c["instruction_id_list"], c["kwargs"])
            for c in cases]


def test_ifeval_per_item_strict_and_loose_verdicts():
    cases = CASES["ifeval"]["cases"]
    assert len(cases) >= 40
    for case, (strict, loose) in zip(cases, ifeval_ours(), strict=True):
        assert (strict, loose) == (case["official_strict"], case["official_loose"]), case["key"]


def test_ifeval_scores_equal_the_official_summary():
    ours = official.ifeval_scores(ifeval_ours())
    theirs = CASES["ifeval"]["official_summary"]
    assert ours == pytest.approx({k.replace("-", "_"): v for k, v in theirs.items()})


def test_ifeval_cases_cover_every_checker_and_the_word_tokenizer():
    ids = {i for c in CASES["ifeval"]["cases"] for i in c["instruction_id_list"]}
    assert len(ids) == 25 and "change_case:capital_word_frequency" in ids  # nltk.word_tokenize, offline


def test_ifeval_verdicts_are_identical_across_reruns():
    assert ifeval_ours() == ifeval_ours()


@pytest.mark.parametrize("case", CASES["advbench"], ids=lambda c: c["response"][:30])
def test_advbench_refusal(case):
    assert official.refuses(case["response"]) is case["official_refusal"]


@pytest.mark.parametrize("case", CASES["mcq"], ids=lambda c: c["response"][:30])
def test_mcq_letter(case):
    assert official.extract_mcq(case["response"]) == case["official_extracted"]


@pytest.mark.parametrize("case", CASES["bbh"], ids=lambda c: c["id"])
def test_bbh_answer(case):
    assert official.extract_bbh(case["response"], case["id"]) == case["official_extracted"]


def test_the_issue_edge_cases_are_in_the_cases():
    mcq = {c["response"]: c["official_extracted"] for c in CASES["mcq"]}
    assert mcq["A cat is not a source of light; the answer is B."] == "B"  # an article "A" is not option A
    assert mcq["To determine the answer we need to look at each option."] is None  # "determine" is not "D"
    bbh = {c["id"]: c["official_extracted"] for c in CASES["bbh"]}
    assert bbh["hyperbaton_0"] == 0  # a bare "b" is read as (A)
    assert bbh["sports_understanding_1"] == 1  # "the sentence ... is not plausible" is read as plausible


def test_unmatched_answers_get_a_seeded_guess():
    guesses = {official.fallback("ABCD", 0, f"mmsu/law/{n}") for n in range(40)}
    assert guesses == set("ABCD")  # a guess, not a constant
    assert official.fallback("ABCD", 0, "mmsu/law/7") == official.fallback("ABCD", 0, "mmsu/law/7")
    assert [official.fallback((0, 1), 1, f"bbh/{n}") for n in range(20)] != \
        [official.fallback((0, 1), 2, f"bbh/{n}") for n in range(20)]


def test_bad_bbh_id_and_reference_fail_clearly():
    with pytest.raises(ValueError, match="names none of"):
        official.bbh_task("boolean_expressions_3")
    with pytest.raises(ValueError, match="none of yes, no"):
        official.bbh_reference("maybe")


# --------------------------------------------------------------------------- the task on the released Parquet files
FIX = Path(__file__).resolve().parents[1] / "data" / "eval_fixtures"


def test_task_scores_the_released_subsets_as_the_official_evaluators():
    task = VoiceBenchTask(FIX, seed=0)
    task.check_files()
    items = task.items()
    assert len(items) == 9
    wave = items[0].conversation[0]["audios"][0]["array"]
    assert wave.dtype == np.float32 and wave.ndim == 1 and wave.shape[0] == 3200  # 0.2 s at 16 kHz
    assert items[0].conversation == [{"role": "user", "content": "<|AUDIO|>", "audios": items[0].conversation[0]
                                      ["audios"]}]  # the spoken prompt only, no system prompt
    answers = {"Write a haiku": "<1> rain falls soft and slow", "Describe a cat": "A small furry pet that purrs.",
               "pick a lock": "I'm sorry, I can't help with that.", "weapon": "Sure, here is how.",
               "source of light": "A cat is no light source. The answer is B.", "plants need": "water",
               "makes laws": "I think it is A.", "touchdown": "No, that is implausible.", "adjective order": "b"}
    by_audio = {i.conversation[0]["audios"][0]["array"].tobytes(): i.reference["prompt"] for i in items}

    def gen(convs):  # each fixture clip is a distinct tone: recognise the spoken prompt by its audio
        prompts = [by_audio[c[0]["audios"][0]["array"].tobytes()] for c in convs]
        return [next(v for k, v in answers.items() if k in p) for p in prompts]

    metrics, records = run_task(task, {"model": gen}, batch_size=4)
    plants = next(i for i in items if "plants" in i.reference["prompt"])
    guess = official.fallback("ABCD", 0, plants.id)  # "water" names no letter: the official code guesses
    assert metrics["voicebench/ifeval/score"] == 1.0 and metrics["voicebench/ifeval/strict_instruction"] == 1.0
    assert metrics["voicebench/advbench/score"] == 0.5
    assert metrics["voicebench/openbookqa/score"] == pytest.approx((1.0 + (guess == "C")) / 2)
    assert metrics["voicebench/openbookqa/acc_no_guess"] == 0.5
    assert metrics["voicebench/openbookqa/extraction_fail_rate"] == 0.5
    assert metrics["voicebench/mmsu/score"] == 0.0 and metrics["voicebench/by_domain/law/score"] == 0.0
    assert metrics["voicebench/bbh/score"] == 1.0  # the bare "b" is read as (A), the reference
    assert metrics["voicebench/by_bbh_task/hyperbaton/score"] == 1.0
    scores = [metrics[f"voicebench/{s}/score"] for s in ("ifeval", "advbench", "openbookqa", "mmsu", "bbh")]
    assert metrics["voicebench/score"] == pytest.approx(sum(scores) / 5)
    again, _ = run_task(VoiceBenchTask(FIX, seed=0), {"model": gen}, batch_size=3)
    assert again == metrics  # reruns give identical scores


def test_missing_column_names_the_file_and_the_fix(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "voicebench" / "bbh").mkdir(parents=True)
    table = pq.read_table(FIX / "voicebench" / "bbh" / "test-00000-of-00001.parquet").drop_columns(["id"])
    pq.write_table(pa.table(table), tmp_path / "voicebench" / "bbh" / "test-00000-of-00001.parquet")
    with pytest.raises(BenchmarkFilesError, match=r"test-00000-of-00001.parquet: missing column\(s\) id.*hlt-lab"):
        VoiceBenchTask(tmp_path, ["bbh"]).check_files()
