"""`desta evaluate --compare` on eval dirs, and the stage's output files (metrics.json, predictions, plots CSV)."""

from __future__ import annotations

import csv
import json

import pytest
from params_util import default_params

from desta.evaluate.compare import compare_runs, load_run, markdown_table
from desta.evaluate.run import build_tasks, summary_table, write_outputs


def _eval_dir(path, metrics):
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def test_compare_two_dirs_writes_table_and_png(tmp_path):
    a = _eval_dir(tmp_path / "selfgen", {"heldout/accuracy": 0.6, "heldout/chance": 0.3, "heldout/wer": 0.2,
                                        "heldout/gender/accuracy": 0.9})
    b = _eval_dir(tmp_path / "templated", {"heldout/accuracy": 0.5, "retention/ifeval_following_rate": 0.4})
    params = default_params({"tracking": {"enabled": False}})
    out = compare_runs(params, [str(a), str(b / "metrics.json")], out_dir=str(tmp_path / "cmp"))
    assert out["runs"] == ["selfgen", "templated"]
    table = (tmp_path / "cmp" / "compare.md").read_text().splitlines()
    assert table[0] == "| metric | selfgen | templated |"
    assert "| heldout/accuracy | 0.6000 | 0.5000 |" in table
    assert "| retention/ifeval_following_rate | - | 0.4000 |" in table
    png = (tmp_path / "cmp" / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000


def test_compare_rejects_bad_runs(tmp_path):
    params = default_params({"tracking": {"enabled": False}})
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_run(params, str(tmp_path))
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_run(params, str(tmp_path))


def test_markdown_table_skips_counts():
    assert "n_items" not in markdown_table([("a", {"x/accuracy": 1.0, "x/n_items": 3.0})])


def test_write_outputs_and_summary(tmp_path):
    metrics = {"heldout/accuracy": 0.5, "heldout/chance": 0.25, "heldout/gender/accuracy": 1.0,
               "heldout/gender/calibrated_choice_accuracy": 0.75, "heldout/gender/chance": 0.5,
               "heldout/n_items": 4.0, "heldout/wer": 0.1}
    records = {"heldout": [{"id": "a", "prediction": "x", "correct": 1.0}]}
    write_outputs(tmp_path, metrics, records)
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    assert json.loads((tmp_path / "predictions" / "heldout.jsonl").read_text())["id"] == "a"
    rows = list(csv.DictReader(open(tmp_path / "plots" / "accuracy_by_slice.csv")))
    assert rows == [{"slice": "heldout/gender", "accuracy": "1.0", "chance": "0.5", "choice_accuracy": "",
                     "calibrated_choice_accuracy": "0.75"}]
    table = summary_table(metrics)
    assert "| heldout/accuracy | 0.5000 | 0.2500 |" in table and "| heldout/wer | 0.1000 |  |" in table


def test_build_tasks_follows_params(tmp_path):
    params = default_params({"evaluate": {"tasks": ["heldout", "retention", "mmau", "voicebench"]},
                               "paths": {"benchmarks_root": str(tmp_path)}})
    assert [t.name for t in build_tasks(params)] == ["heldout", "retention", "mmau", "voicebench"]
    with pytest.raises(Exception, match="evaluate.tasks"):
        default_params({"evaluate": {"tasks": ["mmlu"]}})


def test_cached_transcripts_fill_only_known_clips():
    from desta.evaluate.run import with_cached_transcripts

    conv = [{"role": "system", "content": "s"},
            {"role": "user", "content": "<|AUDIO|>\n\nq", "audios": [{"audio": "a.wav", "text": None}]}]
    assert with_cached_transcripts(conv, {})[1]["audios"][0]["text"] is None
    filled = with_cached_transcripts(conv, {"a.wav": "hello there"})
    assert filled[1]["audios"][0]["text"] == "hello there" and conv[1]["audios"][0]["text"] is None  # no mutation
    given = [{"role": "user", "content": "<|AUDIO|>", "audios": [{"audio": "a.wav", "text": "kept"}]}]
    assert with_cached_transcripts(given, {"a.wav": "other"})[0]["audios"][0]["text"] == "kept"
