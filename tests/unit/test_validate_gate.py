"""The Great Expectations gate: a good set passes; each deliberately broken set fails with a readable report."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from params_util import default_params

from desta.data.manifest import Clip, write_shard
from desta.records import build_record, shard_path
from desta.selfgen.prompts import applicable, load_pool
from desta.validate.gate import ValidationFailed, run_validate

RESPONSES = ["The speaker sounds calm and friendly.", "A dog barks twice near a busy road.",
             "Soft jazz piano with a slow swing feel.", "Someone greets a friend warmly.",
             "Rain falls steadily on a metal roof.", "An upbeat melody on acoustic guitar."]


def build(root: Path, n: int = 24, **broken) -> dict:
    """A manifest of n clips + 1 record per clip spread over every prompt category; `broken` tweaks one aspect."""
    pool = load_pool()
    unlabelled = Clip(id="x", audio="x.wav", duration=1.0, sample_rate=16000, channels=1, source="demo",
                      domain="speech", transcript="hello")
    prompts = {c: ps[0] for c, ps in applicable(pool, unlabelled).items()}  # every category these clips can get
    cats = sorted(prompts)
    clips, records = [], []
    for i in range(n):
        wav = root / "audio" / f"c{i}.wav"
        wav.parent.mkdir(parents=True, exist_ok=True)
        sf.write(wav, np.zeros(800, dtype="float32"), 16000)
        split = ("train", "train", "valid", "test")[i % 4]
        clip = Clip(id=f"demo/c{i}", audio=str(wav), duration=1.0, sample_rate=(44100, 16000)[i % 2], channels=1,
                    source="demo", domain="speech", split=split, license="CC0", content_hash=f"h{i}",
                    transcript="hello")
        clips.append(clip)
        if split != "test":
            cat = cats[len(records) % len(cats)]
            rec = build_record(clip, 0, "[00:00-00:01] hello (Duration: 1s)", prompts[cat],
                               f"{RESPONSES[i % len(RESPONSES)]} ({i})",
                               {"generator": "x", "generator_hash": "sha256:0", "gen_params": {}, "seed": 0,
                                "target_source": "llm"})
            records.append(rec)
    for fn in broken.values():
        fn(clips, records)
    write_shard(clips, root / "manifests" / "manifest-00000.parquet")
    gen = root / "gen"
    gen.mkdir(parents=True, exist_ok=True)
    shard_path(gen, 0).write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"paths": {"manifests": str(root / "manifests"), "generated": str(gen), "validation": str(root / "val")},
            "tracking": {"enabled": False}}


def failures(root: Path, severity: str = "critical") -> list[tuple[str, str, str]]:
    report = json.loads((root / "val" / "report.json").read_text())
    return [(r["subject"], r["expectation"], r["column"]) for r in report["results"]
            if not r["success"] and r["severity"] == severity]


def test_good_set_passes_with_data_docs(tmp_path):
    summary = run_validate(default_params(build(tmp_path)))
    assert summary["success"] and summary["critical_failures"] == 0 and summary["warnings"] == 0
    assert (tmp_path / "val" / "data_docs" / "index.html").is_file()
    report = json.loads((tmp_path / "val" / "report.json").read_text())
    assert all(r["risk"] for r in report["results"]) and report["rows"]["generated"] == 18


def _dup_id(clips, records):
    records[1]["id"] = records[0]["id"]


def _missing_audio(clips, records):
    Path(clips[3].audio).unlink()


def _leaks(clips, records):
    for r in records[:6]:
        r["response"] = "[00:00-00:01] hello (Duration: 1s) is what the metadata says."


def _split_leak(clips, records):
    clips[4].content_hash = clips[3].content_hash  # the same audio in train and test


def _bad_rate(clips, records):
    clips[0].sample_rate = 12345


def _bad_record(clips, records):
    records[0]["response"] = "ok"
    records[1]["messages"][1]["content"] = "no audio slot here"
    records[2]["split"] = "test"


def _unknown_source(clips, records):
    records[0]["target_source"] = "human"


@pytest.mark.parametrize("breaker, expected", [
    (_unknown_source, ("generated", "expect_column_values_to_be_in_set", "target_source")),
    (_dup_id, ("generated", "expect_column_values_to_be_unique", "id")),
    (_missing_audio, ("manifest", "expect_column_values_to_be_in_set", "audio_exists")),
    (_leaks, ("generated", "expect_column_values_to_not_match_regex_list", "response")),
    (_split_leak, ("manifest", "expect_column_values_to_be_between", "content_splits")),
    (_bad_rate, ("manifest", "expect_column_values_to_be_in_set", "sample_rate")),
])
def test_broken_sets_stop_the_pipeline_after_writing_the_report(tmp_path, breaker, expected):
    with pytest.raises(ValidationFailed, match="report.json"):
        run_validate(default_params(build(tmp_path, **{"b": breaker})))
    assert expected in failures(tmp_path)


def test_broken_records_are_named(tmp_path):
    with pytest.raises(ValidationFailed) as err:
        run_validate(default_params(build(tmp_path, b=_bad_record)))
    got = failures(tmp_path)
    assert ("generated", "expect_column_value_lengths_to_be_between", "response") in got
    assert ("generated", "expect_column_values_to_be_in_set", "messages_ok") in got
    assert ("generated", "expect_column_values_to_be_in_set", "split_matches") in got
    assert "risk:" in str(err.value)


def test_warnings_do_not_block_unless_asked(tmp_path):
    def one_leak(clips, records):
        records[0]["response"] = "Based on the metadata, a greeting."

    raw = build(tmp_path, b=one_leak)
    summary = run_validate(default_params(raw))
    assert summary["success"] and summary["warnings"] >= 1
    assert ("generated", "expect_column_values_to_not_match_regex_list", "response") in failures(tmp_path, "warning")
    with pytest.raises(ValidationFailed):
        run_validate(default_params({**raw, "validate": {"fail_on_warning": True}}))


def test_label_categories_are_expected_only_when_some_clip_has_the_labels():
    import pandas as pd

    from desta.validate.gate import expected_categories

    pool = load_pool()
    bare = pd.DataFrame({"domain": ["speech", "sound"], "gender": [None, None], "sound_labels": [None, np.array([])]})
    assert "labels" not in expected_categories(pool, bare, {"speech", "sound"})
    assert "paralinguistic" in expected_categories(pool, bare, {"speech"})
    assert expected_categories(pool, bare, {"music"}) == sorted({p.category for p in pool.prompts
                                                                if "music" in p.domains and not p.requires})
    one = bare.assign(sound_labels=[None, np.array(["siren"])])
    assert "labels" in expected_categories(pool, one, {"sound"})
    assert "labels" not in expected_categories(pool, one, {"speech"})  # the labelled clip is not a speech clip


def test_report_rows_list_missing_values_in_a_stable_order():
    """GX returns the values a column misses in set order (it varies between processes); report.json, a DVC output,
    must not: they are sorted. Unexpected values keep their data order."""
    from types import SimpleNamespace

    from desta.validate.gate import _row

    def result(**res):
        cfg = SimpleNamespace(type="expect_column_distinct_values_to_contain_set", kwargs={"column": "c"},
                              meta={"severity": "warning", "risk": "r"})
        return SimpleNamespace(expectation_config=cfg, result=res, success=False, exception_info=None)

    assert _row("s", result(partial_missing_list=["sound", "music", "labels"]))["sample"] == ["labels", "music",
                                                                                            "sound"]
    assert _row("s", result(partial_unexpected_list=["b", "a"]))["sample"] == ["b", "a"]
