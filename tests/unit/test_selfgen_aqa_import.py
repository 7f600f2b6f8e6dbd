"""Import of released DeSTA-AQA5M jsonl rows into the generated-set format (idempotent, audio under a data root)."""

import json

import pytest
from params_util import default_params

from desta.records import read_records
from desta.selfgen.aqa_import import guess_domain, import_aqa


def _row(i: int, dataset: str = "IEMOCAP") -> dict:
    return {"id": f"Session1/clip{i % 3}.wav", "dataset": dataset,
            "seed_description": "[00:00-00:02] Hi (Duration: 2s)",
            "prompt": f"Describe the audio {i}.", "response": f"A greeting number {i}.",
            "messages": [{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "Describe. <start_audio><|AUDIO|><end_audio>",
                          "audios": [{"audio": f"Session1/clip{i % 3}.wav", "text": "Hi"}]}]}


def test_import_maps_rows_and_is_idempotent(tmp_path):
    src = tmp_path / "aqa"
    src.mkdir()
    (src / "part-0.jsonl").write_text("".join(json.dumps(_row(i)) + "\n" for i in range(6)))
    (src / "part-1.jsonl").write_text(json.dumps(_row(0, "Clotho")) + "\n")
    params = default_params({"paths": {"generated": str(tmp_path / "gen")}, "tracking": {"enabled": False}})
    summary = import_aqa(params, src, data_root=tmp_path / "corpora")
    recs = list(read_records(tmp_path / "gen"))
    assert summary["records"] == len(recs) == 7
    assert [r["id"] for r in recs[:4]] == ["IEMOCAP/Session1/clip0#0", "IEMOCAP/Session1/clip1#0",
                                           "IEMOCAP/Session1/clip2#0", "IEMOCAP/Session1/clip0#1"]
    assert recs[0]["audio"] == str(tmp_path / "corpora" / "Session1/clip0.wav")
    assert recs[0]["messages"][1]["audios"][0]["audio"] == recs[0]["audio"]
    assert recs[-1]["domain"] == "sound" and recs[0]["domain"] == "speech"
    assert len({r["split"] for r in recs if r["clip_id"] == "IEMOCAP/Session1/clip0"}) == 1
    assert recs[0]["generator_hash"].startswith("sha256:")
    before = (tmp_path / "gen" / "shard-00000.jsonl").read_bytes()
    assert import_aqa(params, src, data_root=tmp_path / "corpora") == summary
    assert (tmp_path / "gen" / "shard-00000.jsonl").read_bytes() == before


def test_bad_rows_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(_row(0)) + "\n" + json.dumps({"id": "x.wav", "dataset": "d"}) + "\n")
    params = default_params({"paths": {"generated": str(tmp_path / "gen")}, "tracking": {"enabled": False}})
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*seed_description"):
        import_aqa(params, bad)
    with pytest.raises(FileNotFoundError, match="no .jsonl"):
        import_aqa(params, tmp_path / "nowhere")


def test_guess_domain():
    assert guess_domain("MusicCaps") == "music" and guess_domain("ESC-50") == "sound"
    assert guess_domain("VCTK") == "speech"
