"""Released-benchmark loaders on small fixtures in the released formats (tests/data/eval_fixtures), scored with
deterministic generators and a rule-based judge (a real callable standing for the judge LLM)."""

from __future__ import annotations

import json
import re
import shutil
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


def test_sakura_single_and_multi_hop_with_judge():
    task = SakuraTask(FIX, keyword_judge, ["Animal"])
    items = task.items()
    assert [i.id for i in items] == ["Animal/dog_01.wav#single", "Animal/dog_01.wav#multi"]
    gen = lambda convs: ["(b) dog" if "What animal" in c[-1]["content"] else "(a) Wings" for c in convs]  # noqa: E731
    metrics, records = run_task(task, {"model": gen})
    assert metrics["sakura/Animal_single/accuracy"] == 1.0 and metrics["sakura/Animal_multi/accuracy"] == 0.0
    assert metrics["sakura/by_hop/single/accuracy"] == 1.0 and metrics["sakura/judge_unparsed"] == 0.0
    assert records[0]["judge"].startswith("Explanation")


def test_sakura_missing_audio_is_reported(tmp_path):
    shutil.copytree(FIX / "sakura", tmp_path / "sakura")
    (tmp_path / "sakura" / "Animal" / "audio" / "dog_01.wav").unlink()
    with pytest.raises(BenchmarkFilesError, match="dog_01.wav"):
        SakuraTask(tmp_path, keyword_judge, ["Animal"]).items()


def test_dynamic_superb_instances_with_judge():
    task = DynamicSuperbTask(FIX, keyword_judge)
    items = task.items()
    assert len(items) == 2 and items[0].slices["instance"] == "EmotionRecognition_Fixture"
    metrics, _ = run_task(task, {"model": lambda convs: ["The speaker sounds sad."] * len(convs)})
    assert metrics["dynamic_superb/EmotionRecognition_Fixture/accuracy"] == 0.5
    assert metrics["dynamic_superb/macro_accuracy"] == 0.5
