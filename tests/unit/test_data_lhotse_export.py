"""Manifest -> lhotse CutSet: metadata survives, audio loads through lhotse. Run: pytest
tests/unit/test_data_lhotse_export.py"""

import numpy as np
import soundfile as sf

from desta.data.lhotse_export import export_cutset
from desta.data.manifest import Clip, write_shard


def test_export_roundtrip_loads_audio_and_keeps_metadata(tmp_path):
    t = np.arange(8000) / 16000
    sf.write(tmp_path / "a.wav", (0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000)
    clips = [Clip(id="demo/a", audio="a.wav", duration=0.5, sample_rate=16000, channels=1, source="demo",
                  domain="speech", split="test", transcript="hello", gender="Female", emotion="Happy",
                  snr_db=5.0, segments=[{"start": 0.1, "end": 0.4, "text": "hello", "speaker": "s1"}]),
             Clip(id="demo/b", audio="s3://bucket/b.wav", duration=1.0, sample_rate=16000, channels=1,
                  source="demo", domain="sound", split="train", sound_labels=["rain"])]
    write_shard(clips, tmp_path / "m/manifest-00000.parquet")
    from lhotse import CutSet

    assert export_cutset(tmp_path / "m", tmp_path / "cuts.jsonl.gz", ["test"], root=tmp_path) == 1
    cut = next(iter(CutSet.from_jsonl_lazy(tmp_path / "cuts.jsonl.gz")))
    sup = cut.supervisions[0]
    assert (cut.id, sup.text, sup.gender, sup.custom["emotion"], sup.custom["snr_db"]) == ("demo/a", "hello",
                                                                                          "Female", "Happy", 5.0)
    assert cut.supervisions[1].start == 0.1 and cut.load_audio().shape == (1, 8000)
    assert export_cutset(tmp_path / "m", tmp_path / "all.jsonl", root=tmp_path) == 2
