"""Released-benchmark loaders on small fixtures in the released formats (tests/data/eval_fixtures), scored with
deterministic generators and a rule-based judge (a real callable standing for the judge LLM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from desta.evaluate.loop import run_task
from desta.evaluate.tasks.common import BenchmarkFilesError
from desta.evaluate.tasks.dynamic_superb import DynamicSuperbTask
from desta.evaluate.tasks.mmau import MMAUTask
from desta.evaluate.tasks.sakura import SakuraTask
from desta.evaluate.tasks.speech_ifeval import SpeechIFEvalTask
from desta.evaluate.tasks.voicebench import VoiceBenchTask

FIX = Path(__file__).resolve().parents[1] / "data" / "eval_fixtures"


def never_judge(prompts):
    raise AssertionError("no judge may run when the benchmark's files are missing")


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
        SakuraTask(tmp_path, never_judge).items()
    with pytest.raises(BenchmarkFilesError, match="DynamicSuperb"):
        DynamicSuperbTask(tmp_path, never_judge).items()


def test_malformed_release_names_file_and_field(tmp_path):
    (tmp_path / "mmau").mkdir()
    (tmp_path / "mmau" / "mmau-test-mini.json").write_text(json.dumps([{"id": "x", "question": "q"}]))
    with pytest.raises(BenchmarkFilesError, match=r"mmau-test-mini.json\[0\]: missing field\(s\) audio_id"):
        MMAUTask(tmp_path).items()


