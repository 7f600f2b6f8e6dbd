"""`desta prepare` end to end on fixture corpora: every kind of bad input is quarantined with its reason and the
valid clips all land in the manifest; real corpus recipes feed the same stage. Run: pytest tests/data/"""

import json
from collections import Counter

import fixtures
import pytest
from params_util import default_params

from desta.data.manifest import iter_clips, read_table
from desta.data.prepare import PrepareError, run_prepare


def _params(tmp_path, sources, **prepare):
    quality = {"max_duration_s": 3.0, **prepare.pop("quality", {})}
    return default_params({"paths": {"raw": str(tmp_path / "raw"), "manifests": str(tmp_path / "manifests")},
                             "tracking": {"enabled": False},
                             "prepare": {"sources": sources, "workers": 1, "quality": quality, **prepare}})


def test_bad_inputs_are_quarantined_with_reasons_and_valid_clips_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixtures.bad_inputs(tmp_path / "bad")
    summary = run_prepare(_params(tmp_path, [{"name": "mixed", "kind": "manifest", "path": "bad"}]), progress=False)
    assert summary["clips"] == 3
    assert sorted(c.audio for c in iter_clips(tmp_path / "manifests")) == ["bad/good1.wav", "bad/good2.flac",
                                                                          "bad/good3.wav"]
    expected = {"duplicate": 1, "unreadable": 1, "truncated": 1, "empty": 2, "silent": 1, "clipped": 1, "nan": 1,
                "wrong_rate": 1, "too_long": 1, "missing": 1, "bad_metadata": 2}
    assert summary["quarantined"]["by_reason"] == expected
    report = [json.loads(line) for line in (tmp_path / "manifests/quarantine.jsonl").read_text().splitlines()]
    assert Counter(r["reason"] for r in report) == Counter(expected)
    malformed = [r for r in report if r["reason"] == "bad_metadata"]
    assert {r["where"].rsplit(":", 1)[1] for r in malformed} == {"15", "16"}
    assert all(r["where"].split(":")[0].endswith("metadata.jsonl") for r in malformed)
    dup = next(r for r in report if r["reason"] == "duplicate")
    assert dup["audio"] == "bad/dup.wav" and "mixed/good1" in dup["detail"]


def test_real_recipes_through_prepare_with_official_and_hash_splits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixtures.librispeech(tmp_path / "ls")
    fixtures.vctk(tmp_path / "vctk")
    fixtures.musiccaps(tmp_path / "mc")
    sources = [{"name": "ls", "kind": "librispeech", "path": "ls"}, {"name": "vctk", "kind": "vctk", "path": "vctk"},
               {"name": "mc", "kind": "musiccaps", "path": "mc", "license": "custom"}]
    summary = run_prepare(_params(tmp_path, sources, quality={"max_duration_s": 10.0}), progress=False)
    assert summary["by_source"]["ls"]["clips"] == 3 and summary["by_source"]["vctk"]["clips"] == 2
    assert summary["quarantined"]["by_reason"] == {"bad_metadata": 1, "missing": 1}
    table = read_table(tmp_path / "manifests").to_pylist()
    rows = {r["id"]: r for r in table}
    assert rows["ls/dev-clean/84/121123/84-121123-0000"]["split"] == "valid"
    assert rows["vctk/wav48_silence_trimmed/p225/p225_001_mic1"]["sample_rate"] == 48000
    assert rows["mc/audio/-0Gj8-vB1q4"]["license"] == "custom" and rows["mc/audio/-0Gj8-vB1q4"]["split"] == "test"


def test_missing_source_directory_fails_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = _params(tmp_path, [{"name": "demo", "kind": "demo", "n_clips": 10},
                                {"name": "v", "kind": "vctk", "path": str(tmp_path / "nowhere")}])
    with pytest.raises(PrepareError, match=r"nowhere does not exist; expected the vctk corpus root"):
        run_prepare(params, progress=False)
    assert not (tmp_path / "raw").exists() and not (tmp_path / "manifests").exists()
