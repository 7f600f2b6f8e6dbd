"""SAKURA parity: release layout read unchanged, the official judge request, and per-reply verdicts equal to those of
the official `llm_judge.py` + `calculate_acc.py` (recorded by running them unchanged outside this repository;
tests/data/parity/README.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from desta.evaluate.loop import run_task
from desta.evaluate.official import sakura as official
from desta.evaluate.tasks.common import BenchmarkFilesError
from desta.evaluate.tasks.sakura import TRACKS, SakuraTask

ROOT = Path(__file__).parents[1] / "data" / "parity"
RECORDED = json.loads((ROOT / "sakura" / "official_verdicts.json").read_text())


@pytest.mark.parametrize("case", RECORDED["cases"], ids=lambda c: repr(c["reply"][:40]))
def test_reply_parsing_and_counting_equal_the_official_scripts(case):
    assert official.extract(case["reply"]) == (case["explanation"], case["judgement"])
    assert official.verdict(case["reply"]) == case["counted"]


def test_recorded_cases_cover_the_edge_cases():
    counted = [c["counted"] for c in RECORDED["cases"]]
    assert len(counted) == 24 and counted.count("invalid") == 11 and counted.count("correct") == 8


@pytest.mark.parametrize("recorded", RECORDED["prompts"], ids=range(3))
def test_judge_request_is_byte_identical(recorded):
    assert official.judge_prompt(recorded["instruction"], recorded["label"], recorded["response"]) == (
        recorded["system"], recorded["user"])


def test_sequential_placeholder_replacement_quirk():
    _, user = official.judge_prompt("Q? (a) x (b) y", "(a) x", "The answer is [GROUND_TRUTH_ANSWER].")
    assert "Model generated response: The answer is (a) x." in user  # the label leaks into the response


def test_official_request_settings():
    settings = RECORDED["request_settings"]
    assert (official.JUDGE_MODEL, official.JUDGE_TEMPERATURE, official.JUDGE_TOP_P) == (
        settings["model"], settings["temperature"], settings["top_p"])
    assert set(settings) == {"model", "temperature", "top_p", "max_tokens_recorded_not_sent"}


def recorded_judge(prompts):
    """Replays the recorded judge replies in order (the stand-in for gpt-4o the official run used)."""
    replies = [c["reply"] for c in RECORDED["cases"]]
    assert len(prompts) == len(replies)
    return replies


def test_release_layout_and_official_accuracy_end_to_end():
    task = SakuraTask(ROOT, recorded_judge)
    items = task.items()
    assert len(items) == 24 and items[0].id == "data/Animal/audio/dog28.wav#single"
    assert items[0].conversation[1]["content"].startswith("<|AUDIO|>\n\nFrom the options provided, which animal")
    assert items[0].conversation[1]["audios"][0]["audio"].endswith("sakura/data/Animal/audio/dog28.wav")
    metrics, records = run_task(task, {"model": lambda convs: ["(a) dog"] * len(convs)})
    assert [r["verdict"] for r in records] == [c["counted"] for c in RECORDED["cases"]]
    assert round(100 * metrics["sakura/accuracy"], 2) == RECORDED["official_accuracy_percent"]  # invalid = wrong
    assert metrics["sakura/judge_invalid"] == 11.0
    per_track = [metrics[f"sakura/{t}_single/accuracy"] for t in TRACKS]
    assert metrics["sakura/single_average"] == pytest.approx(sum(per_track) / 4)


def test_metadata_csv_gives_the_same_items(tmp_path):
    shutil.copytree(ROOT / "sakura", tmp_path / "sakura")
    from_json = [(i.id, i.reference, i.conversation) for i in SakuraTask(tmp_path, recorded_judge).items()]
    for track in TRACKS:
        (tmp_path / "sakura" / "data" / track / "metadata.json").unlink()
    from_csv = [(i.id, i.reference, i.conversation) for i in SakuraTask(tmp_path, recorded_judge).items()]
    assert from_csv == from_json


def test_missing_audio_and_wrong_metadata_name_the_file(tmp_path):
    shutil.copytree(ROOT / "sakura", tmp_path / "sakura")
    (tmp_path / "sakura" / "data" / "Animal" / "audio" / "dog36.wav").unlink()
    with pytest.raises(BenchmarkFilesError, match=r"dog36.wav.*missing.*ckyang1124/SAKURA"):
        SakuraTask(tmp_path, recorded_judge, ["Animal"]).items()
    (tmp_path / "sakura" / "data" / "Gender" / "metadata.json").write_text("[]")
    with pytest.raises(BenchmarkFilesError, match=r"Gender/metadata.json: expected the released mapping"):
        SakuraTask(tmp_path, recorded_judge, ["Gender"]).items()
    (tmp_path / "sakura" / "data" / "Emotion" / "metadata.json").write_text('{"data/Emotion/audio/x.wav": {}}')
    with pytest.raises(BenchmarkFilesError, match=r"missing field\(s\) single_instruction"):
        SakuraTask(tmp_path, recorded_judge, ["Emotion"]).items()


def test_local_judge_is_loaded_only_when_first_used(monkeypatch):
    from desta.config import load_params
    from desta.evaluate import judge

    loads = []
    monkeypatch.setattr(judge, "local_judge", lambda *a: loads.append(a) or (lambda prompts: ["x"] * len(prompts)))
    params = load_params(Path(__file__).parents[2] / "params.yaml")
    fn = judge.make_judge(params)
    assert loads == []  # a missing benchmark file is reported before any judge model loads
    assert fn([("s", "u")]) == ["x"] and fn([("s", "u")]) == ["x"] and len(loads) == 1
