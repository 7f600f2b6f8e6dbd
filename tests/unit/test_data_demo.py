"""The demo corpus and `desta prepare` on it: ground truth, held-out disjointness, determinism, idempotence.
Run: pytest tests/unit/test_data_demo.py"""

import hashlib
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from params_util import default_params

from desta.data import demo, synth
from desta.data.manifest import iter_clips, shard_paths
from desta.data.prepare import run_prepare, stable_split


def test_plan_keeps_heldout_sentences_and_voices_out_of_train():
    items = demo.plan(300, seed=0)
    talk = [i for i in items if i["kind"] in ("speech", "mixture")]
    train = {(i["transcript"]) for i in talk if i["split"] == "train"}
    train_voices = {i["voice"]["espeak"] for i in talk if i["split"] == "train"}
    for split in ("valid", "test"):
        held = [i for i in talk if i["split"] == split]
        assert held and not {i["transcript"] for i in held} & train
        assert not {i["voice"]["espeak"] for i in held} & train_voices
    counts = {s: sum(i["split"] == s for i in items) for s in ("train", "valid", "test")}
    assert len(items) == 300 and counts["test"] >= 40 and counts["valid"] >= 25
    assert {i["kind"] for i in items} == {"speech", "sound", "music", "mixture"}
    assert demo.plan(300, seed=0) == items and demo.plan(300, seed=1) != items
    assert len({demo._key(i) for i in items}) == 300  # no two clips with identical settings (= identical audio)


def test_heldout_gender_is_not_given_away_by_language():
    """In every held-out split each gender speaks English and another language, so a model cannot score on the
    held-out gender question by answering from the language (what version 1's test split allowed)."""
    talk = [i for i in demo.plan(300, seed=0) if i["kind"] == "speech"]
    for split in ("valid", "test"):
        seen = {(i["voice"]["gender"], i["voice"]["language"] == "English") for i in talk if i["split"] == split}
        assert seen == {("Female", True), ("Female", False), ("Male", True), ("Male", False)}, split


_VOICE_HASHES = """
import hashlib
from desta.data import demo
from desta.data.tts import speak
voices = [v.espeak for v in demo.TRAIN_VOICES] + [v.espeak for vs in demo.HELDOUT_VOICES.values() for v in vs]
for v in voices:
    print(v, hashlib.sha256(speak("The night guard fixed the broken bicycle.", voice=v)[0].tobytes()).hexdigest())
"""


def _voice_hashes() -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", _VOICE_HASHES], check=True, capture_output=True, text=True).stdout
    return dict(line.split() for line in out.splitlines())


def test_every_demo_voice_is_byte_reproducible_across_processes_and_seconds():
    """eSpeak's breathy variants (+f2, +f3, +f5) take their noise from the clock: two processes started in different
    seconds give different audio, and `dvc repro` from scratch would re-hash the raw corpus. The demo avoids them."""
    first = _voice_hashes()
    time.sleep(1.1 - time.time() % 1.0)  # the next process starts in another second
    assert _voice_hashes() == first
    assert len(first) == len(demo.TRAIN_VOICES) + sum(map(len, demo.HELDOUT_VOICES.values()))


def test_render_fills_ground_truth_fields():
    specs = {i["kind"]: i for i in demo.plan(12, seed=3)}
    wave, meta = demo.render(specs["mixture"])
    assert wave.dtype == np.float32 and wave.size > demo.SAMPLE_RATE
    for key in ("transcript", "gender", "accent", "language", "pitch", "speaking_speed", "volume", "speaker",
                "background", "snr_db", "reverb", "caption"):
        assert meta[key] is not None, key
    _, music = demo.render(specs["music"])
    assert music["music_chords"] == synth.chord_names(music["music_key"], music["music_mode"],
                                                      tuple(specs["music"]["progression"]))


def test_mix_at_snr_is_exact():
    rng = np.random.default_rng(0)
    speech, noise = rng.standard_normal(16000) * 0.1, synth.sound("rain", 0.5, 16000, rng)
    mixed = synth.mix_at_snr(speech.astype(np.float32), noise, 10.0)
    bg = mixed - speech
    assert 10 * np.log10(np.mean(speech**2) / np.mean(bg**2)) == pytest.approx(10.0, abs=0.05)


def test_stable_split_is_stable_and_proportional():
    splits = [stable_split(f"spk{i}", "desta", 0.1, 0.2) for i in range(4000)]
    assert splits == [stable_split(f"spk{i}", "desta", 0.1, 0.2) for i in range(4000)]
    assert 0.17 < splits.count("test") / 4000 < 0.23 and 0.07 < splits.count("valid") / 4000 < 0.13


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_prepare_demo_smoke_is_deterministic_and_idempotent(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = default_params({"tracking": {"enabled": False},
                               "prepare": {"sources": [{"name": "demo", "kind": "demo", "n_clips": 40}],
                                           "workers": 2}})
    summary = run_prepare(params, progress=False)
    assert summary["clips"] == 40 and summary["quarantined"]["total"] == 0
    assert set(summary["by_domain"]) == {"speech", "sound", "music"} and set(summary["by_split"]) == {
        "train", "valid", "test"}
    clips = list(iter_clips("data/manifests"))
    assert all(c.audio.startswith("data/raw/demo/") and c.sample_rate == 16000 for c in clips)
    assert json.loads((tmp_path / "data/manifests/summary.json").read_text()) == summary
    audio_before, manifest_before = _digest(tmp_path / "data/raw/demo"), _digest(tmp_path / "data/manifests")
    (tmp_path / "data/manifests/manifest-00007.parquet").write_bytes(b"stale shard from an earlier run")
    assert run_prepare(params, progress=False) == summary
    assert _digest(tmp_path / "data/raw/demo") == audio_before
    assert _digest(tmp_path / "data/manifests") == manifest_before and len(shard_paths("data/manifests")) == 1
