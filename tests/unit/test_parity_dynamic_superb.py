"""Dynamic-SUPERB: task files read as released, each instance scored by the metric its instance.json declares
(accuracy = Phase-1 exact match ignoring case; wer / cer / per = corpus error rates; llm_classification = judge).
Data files are laid out here in the HF snapshot format with synthetic tones (README in tests/data/parity)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from desta.evaluate.loop import run_task
from desta.evaluate.official import dynamic_superb as official
from desta.evaluate.tasks.common import BenchmarkFilesError
from desta.evaluate.tasks.dynamic_superb import DynamicSuperbTask

TASKS = Path(__file__).parents[1] / "data" / "parity" / "dynamic_superb" / "tasks"
REAL = "SourceDetection_mb23-music_caps_4sec_wave_type"


def wav_cell(freq: float, name: str) -> dict:
    buf = io.BytesIO()
    sf.write(buf, (0.1 * np.sin(2 * np.pi * freq * np.arange(1600) / 16000)).astype(np.float32), 16000, format="WAV")
    return {"bytes": buf.getvalue(), "path": name}


def add_instance(root: Path, name: str, rows: list[dict], metric: str | None = None) -> None:
    """data/<name>/data/test-00000-of-00001.parquet (+ a made-here instance.json when `metric` is given)."""
    if metric is not None:
        folder = root / "dynamic_superb" / "tasks" / "Made" / name
        folder.mkdir(parents=True)
        (folder / "instance.json").write_text(json.dumps({"name": name, "description": "", "keywords": "",
                                                          "metrics": [metric], "path": f"DynamicSuperb/{name}",
                                                          "version": "0" * 40}))
    out = root / "dynamic_superb" / "data" / name / "data"
    out.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "test-00000-of-00001.parquet")


@pytest.fixture
def bench(tmp_path):
    shutil.copytree(TASKS, tmp_path / "dynamic_superb" / "tasks")
    add_instance(tmp_path, REAL, [
        {"file": "a.wav", "audio": wav_cell(220, "a.wav"), "instruction": "Which wave type? Answer sine or square.",
         "label": "sine"},
        {"file": "b.wav", "audio": wav_cell(440, "b.wav"), "instruction": "Which wave type? Answer sine or square.",
         "label": "square"},
        {"file": "c.wav", "audio": wav_cell(660, "c.wav"), "instruction": "Which wave type? Answer sine or square.",
         "label": "sine"}])
    add_instance(tmp_path, "SuperbASR_Made", [
        {"file": "u1.wav", "audio": wav_cell(300, "u1.wav"), "instruction": "Transcribe.", "label": "hello world"},
        {"file": "u2.wav", "audio": wav_cell(310, "u2.wav"), "instruction": "Transcribe.", "label": "good morning"}],
        metric="wer")
    add_instance(tmp_path, "SpeakerVerification_Made", [
        {"file": "p1.wav", "audio": wav_cell(200, "p1.wav"), "audio2": wav_cell(201, "p1b.wav"),
         "instruction": "Same speaker? Answer yes or no.", "label": "yes"},
        {"file": "p2.wav", "audio": wav_cell(200, "p2.wav"), "audio2": wav_cell(900, "p2b.wav"),
         "instruction": "Same speaker? Answer yes or no.", "label": "no"}], metric="llm_classification")
    return tmp_path


ANSWERS = {"a.wav": "Sine", "b.wav": "square.", "c.wav": "The wave is sine.", "u1.wav": "hello word",
           "u2.wav": "good morning", "p1.wav": "Yes, the same speaker.", "p2.wav": "Probably."}


def judge(prompts):
    """Correct iff the reference word opens the response; 'Probably.' gets an unparsable reply."""
    out = []
    for _s, user in prompts:
        label = user.split("Reference answer: ")[1].split("\n")[0]
        response = user.split("Model response: ")[1]
        out.append("I cannot tell." if response == "Probably." else
                   f"Explanation: x\nJudgement: {'correct' if response.lower().startswith(label) else 'incorrect'}")
    return out


def test_each_instance_gets_the_metric_its_task_file_declares(bench):
    task = DynamicSuperbTask(bench, judge, [REAL, "SuperbASR_Made", "SpeakerVerification_Made"])
    items = task.items()
    assert task.metric == {REAL: "accuracy", "SuperbASR_Made": "wer", "SpeakerVerification_Made": "llm_classification"}
    pair = next(i for i in items if i.id == "SpeakerVerification_Made/p1.wav")
    assert pair.conversation[1]["content"] == "<|AUDIO|><|AUDIO|>\n\nSame speaker? Answer yes or no."
    assert len(pair.conversation[1]["audios"]) == 2
    by_conv = {id(i.conversation): ANSWERS[i.id.split("/")[-1]] for i in items}  # the stand-in model, per clip
    task.items = lambda: items
    metrics, _ = run_task(task, {"model": lambda convs: [by_conv[id(c)] for c in convs]})
    assert metrics[f"dynamic_superb/{REAL}/accuracy"] == pytest.approx(1 / 3)  # only "Sine" == "sine" ignoring case
    assert metrics["dynamic_superb/SuperbASR_Made/wer"] == pytest.approx(0.25)  # 1 substitution / 4 words
    assert metrics["dynamic_superb/SpeakerVerification_Made/accuracy"] == 0.5  # unparsable verdict = wrong
    assert metrics["dynamic_superb/judge_unparsed"] == 1.0
    assert metrics["dynamic_superb/macro_accuracy"] == pytest.approx((1 / 3 + 0.5) / 2)


def test_phase1_accuracy_is_exact_match_ignoring_case():
    assert official.exact_match("SAD", "sad")
    assert not official.exact_match("sad.", "sad") and not official.exact_match(" sad", "sad")
    assert not official.exact_match("The speaker sounds sad", "sad")


def test_error_rates_are_corpus_level():
    assert official.error_rate("wer", ["a b c", "d"], ["a b", ""]) == pytest.approx(0.5)
    assert official.error_rate("cer", ["abcd"], ["abed"]) == pytest.approx(0.25)
    assert official.error_rate("per", ["h eh l ow"], ["h ah l ow"]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="non-empty"):
        official.error_rate("wer", [""], ["x"])


def test_unsupported_metric_and_missing_data_fail_before_any_model(bench):
    add_instance(bench, "Made_Bleu", [{"file": "x", "audio": wav_cell(100, "x"), "instruction": "i", "label": "l"}],
                 metric="bleu")
    with pytest.raises(BenchmarkFilesError, match=r"Made_Bleu/instance.json: metrics\[0\] is 'bleu'; supported"):
        DynamicSuperbTask(bench, judge).items()
    with pytest.raises(BenchmarkFilesError, match=r"no instance.json named \['Nope'\]"):
        DynamicSuperbTask(bench, judge, ["Nope"]).items()
    shutil.rmtree(bench / "dynamic_superb" / "data" / REAL)
    with pytest.raises(BenchmarkFilesError, match=rf"data/{REAL}: no \*.parquet files.*hf download"):
        DynamicSuperbTask(bench, judge, [REAL]).items()


def test_released_task_files_are_read_unchanged():
    info = json.loads((TASKS / "SourceDetection" / REAL / "instance.json").read_text())
    assert info["path"] == f"DynamicSuperb/{REAL}" and info["metrics"] == ["accuracy"]
