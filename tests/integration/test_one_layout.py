"""One inference layout: the same clip and instruction sent through `desta chat`, `desta evaluate`'s generator and the
MLflow pyfunc `desta register` logs (audio sent as base64 WAV bytes, as a REST client would) give the same answer,
with the real small offline models."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
from params_util import default_params

from desta.data.tts import speak
from desta.evaluate.run import make_runners
from desta.evaluate.tasks.common import audio_conversation
from desta.models.audio_llm import DeSTA25AudioModel

pytestmark = [pytest.mark.integration, pytest.mark.slow]
INSTRUCTION = "What is the speaker saying?"
TOKENS = 16


@pytest.fixture(scope="module")
def model_and_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("layout")
    params = default_params({"tracking": {"enabled": False}})
    DeSTA25AudioModel.from_params(params.model, params.model_cache_dir(), seed=3).save_pretrained(root / "model")
    wave, sr = speak("The quick brown fox jumps over the lazy dog near the river bank.")
    sf.write(root / "clip.wav", wave, sr)
    assert len(wave) / sr > 2.5, "a multi-second clip"
    return root / "model", root / "clip.wav"


def test_chat_evaluate_and_served_model_answer_alike(model_and_clip, tmp_path):
    model_dir, clip = model_and_clip
    chat = subprocess.run([sys.executable, "-m", "desta.cli", "chat", "--model-dir", str(model_dir), "--audio",
                           str(clip), "--json", "--max-new-tokens", str(TOKENS), INSTRUCTION],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2])
    assert chat.returncode == 0, chat.stderr[-3000:]
    chat_answer = json.loads(chat.stdout.strip().splitlines()[-1])["answer"]

    params = default_params({"tracking": {"enabled": False}, "evaluate": {"model": str(model_dir)}})
    generators, _ = make_runners(params)
    eval_answer = generators["model"](TOKENS)([audio_conversation(str(clip), INSTRUCTION)])[0]

    import mlflow.pyfunc

    from desta.registry import _pyfunc_class, signature

    mlflow.pyfunc.save_model(tmp_path / "pyfunc", python_model=_pyfunc_class()(), signature=signature(),
                             artifacts={"model_dir": str(model_dir)})
    served = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    payload = base64.b64encode(clip.read_bytes()).decode()
    served_answer = served.predict(pd.DataFrame({"audio": [payload], "instruction": [INSTRUCTION]}),
                                   params={"max_new_tokens": TOKENS})["answer"][0]
    assert chat_answer.strip()
    assert chat_answer == eval_answer == served_answer
