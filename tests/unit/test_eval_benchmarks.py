"""Released-benchmark loaders on small fixtures in the released formats (tests/data/eval_fixtures), scored with
deterministic generators and a rule-based judge (a real callable standing for the judge LLM)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from desta.evaluate.loop import run_task
from desta.evaluate.tasks.common import BenchmarkFilesError
from desta.evaluate.tasks.dynamic_superb import DynamicSuperbTask
from desta.evaluate.tasks.mmau import MMAUTask
from desta.evaluate.tasks.sakura import SakuraTask
from desta.evaluate.tasks.speech_ifeval import SpeechIFEvalTask
from desta.evaluate.tasks.voicebench import VoiceBenchTask, parse_options

FIX = Path(__file__).resolve().parents[1] / "data" / "eval_fixtures"


def keyword_judge(prompts):
    """Correct iff the ground truth / reference text appears in the response; CoT: 'because' means reasoning."""
    out = []
    for _system, user in prompts:
        if user.startswith("Instruction:") and "Response:" in user and "Reference answer" not in user:
            out.append("Result: YES" if "because" in user.split("Response:", 1)[1] else "Result: NO")
            continue
        truth = re.search(r"(?:Ground truth|Reference answer): (.*)", user).group(1).lower()
        response = user.split("response: ", 1)[1].lower()
        out.append(f"Explanation: compared.\nJudgement: {'correct' if truth in response else 'incorrect'}")
    return out


def test_mmau_reads_released_json_and_scores_official_rule():
    task = MMAUTask(FIX)
    items = task.items()
    assert [i.id for i in items] == ["fx-0001", "fx-0002", "fx-0003"]
    assert items[0].conversation[0]["content"].startswith("Focus on the audio clips")
    assert items[0].conversation[-1]["audios"][0]["audio"].endswith("mmau/test-mini-audios/fx-0001.wav")
    answers = {"fx-0001": 'The correct answer is: "Dog"', "fx-0002": "electric guitar", "fx-0003": "No"}
    ids = {i.conversation[-1]["audios"][0]["audio"]: i.id for i in items}
    gen = lambda convs: [answers[ids[c[-1]["audios"][0]["audio"]]] for c in convs]  # noqa: E731
    metrics, _ = run_task(task, {"model": gen})
    assert metrics["mmau/accuracy"] == pytest.approx(2 / 3)
    assert metrics["mmau/music/accuracy"] == 0.0 and metrics["mmau/sound/accuracy"] == 1.0
    assert metrics["mmau/by_difficulty/hard/accuracy"] == 1.0
    assert metrics["mmau/chance"] == pytest.approx((0.25 + 0.25 + 0.5) / 3)


def test_missing_benchmark_files_say_where_to_get_them(tmp_path):
    with pytest.raises(BenchmarkFilesError, match="Sakshi113/MMAU"):
        MMAUTask(tmp_path).items()
    with pytest.raises(BenchmarkFilesError, match="kehanlu/Speech-IFEval"):
        SpeechIFEvalTask(tmp_path, judge=None).items()
    with pytest.raises(BenchmarkFilesError, match="hlt-lab/voicebench"):
        VoiceBenchTask(tmp_path, ["ifeval"]).items()
    with pytest.raises(BenchmarkFilesError, match="ckyang1124/SAKURA"):
        SakuraTask(tmp_path, keyword_judge).items()
    with pytest.raises(BenchmarkFilesError, match="DynamicSuperb"):
        DynamicSuperbTask(tmp_path, keyword_judge).items()


def test_malformed_release_names_file_and_field(tmp_path):
    (tmp_path / "mmau").mkdir()
    (tmp_path / "mmau" / "mmau-test-mini.json").write_text(json.dumps([{"id": "x", "question": "q"}]))
    with pytest.raises(BenchmarkFilesError, match=r"mmau-test-mini.json\[0\]: missing field\(s\) audio_id"):
        MMAUTask(tmp_path).items()


def test_speech_ifeval_rates_ifrate_and_forgetting():
    task = SpeechIFEvalTask(FIX, judge=keyword_judge)
    items = task.items()
    assert len(items) == 8 and sum(i.runner == "backbone" for i in items) == 4
    bb = next(i for i in items if i.id == "ce-1:backbone")
    assert bb.conversation[-1]["content"].startswith("Speech Input: [00:00:00 - 00:00:03] I will be there soon.")
    assert "audios" not in bb.conversation[-1]

    def model(convs):  # follows the capital-letters item only; no reasoning
        return ["FEMALE, THE SPEAKER IS A WOMAN" if "capital" in c[-1]["content"] else "ok" for c in convs]

    def backbone(convs):  # follows all three rule-based items and reasons
        out = []
        for c in convs:
            t = c[-1]["content"]
            out.append("THE SPEAKER IS A FEMALE VOICE" if "capital" in t else '"He sat down by the fire."'
                       if "quotation" in t else "A short angry tale." if "20 words" in t else
                       "It is female because the pitch is high.")
        return out

    metrics, records = run_task(task, {"model": model, "backbone": backbone}, batch_size=2)
    assert metrics["speech_ifeval/closed_ended_following_rate"] == 0.5
    assert metrics["speech_ifeval/creative_writing_following_rate"] == 1.0  # "ok" has fewer than 20 words
    assert metrics["speech_ifeval/cot_following_rate"] == 0.0
    assert metrics["speech_ifeval/ifrate"] == pytest.approx(0.5)
    assert metrics["speech_ifeval/backbone/ifrate"] == 1.0
    assert metrics["speech_ifeval/forgetting_rate"] == pytest.approx(-0.5)


def test_speech_ifeval_without_judge_reports_rule_based_ifrate():
    task = SpeechIFEvalTask(FIX, judge=None)
    metrics, _ = run_task(task, {"model": lambda c: ["ok"] * len(c), "backbone": lambda c: ["ok"] * len(c)})
    assert "speech_ifeval/ifrate" not in metrics
    assert metrics["speech_ifeval/ifrate_rule_based"] == pytest.approx((0.0 + 1.0) / 2)


def test_voicebench_subsets_from_parquet():
    task = VoiceBenchTask(FIX)
    items = task.items()
    assert len(items) == 9
    wave = items[0].conversation[0]["audios"][0]["array"]
    assert wave.dtype == np.float32 and wave.ndim == 1 and wave.shape[0] == 3200  # 0.2 s at 16 kHz
    answers = {"Write a haiku": "rain falls soft and slow", "Describe a cat": "A small furry pet that purrs happily.",
               "pick a lock": "I'm sorry, I can't help with that.", "weapon": "Sure, here is how.",
               "source of light": "The answer is B.", "plants need": "water", "makes laws": "I think it is A.",
               "touchdown": "No, that is implausible.", "adjective order": "(A)"}
    by_audio = {i.conversation[0]["audios"][0]["array"].tobytes(): i.reference["prompt"] for i in items}

    def gen(convs):  # each fixture clip is a distinct tone: recognise the spoken prompt by its audio
        prompts = [by_audio[c[0]["audios"][0]["array"].tobytes()] for c in convs]
        return [next(v for k, v in answers.items() if k in p) for p in prompts]

    metrics, _ = run_task(task, {"model": gen}, batch_size=4)
    assert metrics["voicebench/ifeval/score"] == 1.0
    assert metrics["voicebench/advbench/score"] == 0.5
    assert metrics["voicebench/openbookqa/score"] == 1.0  # "water" matched through the option text
    assert metrics["voicebench/mmsu/score"] == 0.0 and metrics["voicebench/bbh/score"] == 1.0
    assert metrics["voicebench/score"] == pytest.approx((1.0 + 0.5 + 1.0 + 0.0 + 1.0) / 5)
    assert metrics["voicebench/by_bbh_task/hyperbaton/score"] == 1.0


def test_parse_options_inline_and_multiline():
    assert parse_options("Q? A. the moon B. the sun C. a rock D. a tree") == {
        "A": "the moon", "B": "the sun", "C": "a rock", "D": "a tree"}
    assert parse_options("Q?\nA. x y\nB. z")["B"] == "z"
