"""Parameter profiles (infra/profiles/*.yaml) load, validate and build what they promise. The paper profile is the
official DeSTA2.5-Audio configuration: checked here with tiny random backbones of the official depth, so it cannot
rot while the real 8B/large-v3 weights stay out of CI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import tiny_chat_llm, tiny_tokenizer, tiny_whisper

from desta.config import params_from_dict
from desta.models.audio_llm import DeSTA25AudioModel
from desta.pipeline import PROFILES_DIR, merged_params
from desta.train.deepspeed import build_ds_config
from desta.train.schedule import schedule_fn

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("profile", sorted(p.stem for p in (ROOT / PROFILES_DIR).glob("*.yaml")))
def test_every_profile_validates_against_params_yaml(profile):
    params_from_dict(merged_params(ROOT / "params.yaml", profile, ROOT), profile)


def _official_depth_backbones():
    """Whisper with large-v3's 32 encoder layers (tiny width) and a tiny Llama-style chat LLM, random weights."""
    whisper, processor = tiny_whisper(encoder_layers=32)
    tok = tiny_tokenizer()
    return whisper, processor, tiny_chat_llm(tok), tok


def test_paper_profile_is_the_official_configuration():
    params = params_from_dict(merged_params(ROOT / "params.yaml", "paper", ROOT), "paper")
    m, t, g = params.model, params.train, params.generate
    assert (m.encoder, m.llm) == ("openai/whisper-large-v3", "meta-llama/Llama-3.1-8B-Instruct")
    assert (m.target_layers, m.prompt_size, m.qformer_layers) == ([7, 15, 23, 31], 64, 6)
    assert g.target_sources == ["llm"] and g.generator is None, "every target from the backbone itself"
    ds = build_ds_config(t, world_size=8, on_cpu=False)
    assert ds["train_batch_size"] == 96 and ds["train_micro_batch_size_per_gpu"] == 12
    assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"] and ds["gradient_clipping"] == 1.0
    assert ds["optimizer"]["params"] == {"lr": 1e-4, "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 0.01}
    assert (t.warmup_steps, t.max_seq_len, t.lr_schedule) == (5000, 300, "cosine")
    lam = schedule_fn(t)
    assert lam(5000) == pytest.approx(1.0) and lam(t.max_steps) == pytest.approx(0.0, abs=1e-9), "cosine to 0"
    assert t.max_steps * 96 == pytest.approx(5 * 4_963_845, rel=1e-4), "5 epochs of DeSTA-AQA5M"

    whisper, processor, llm, tok = _official_depth_backbones()
    model = DeSTA25AudioModel.from_parts(whisper, processor, llm, tok, m.model_copy(update={"dtype": "float32"}))
    assert model.config.resolved_layers == [7, 15, 23, 31]
    assert tuple(model.connector.queries.shape) == (4, 64, 16) and len(model.connector.qformer.layer) == 6
    batch = model.build_inputs([[{"role": "user", "content": "<|AUDIO|> describe", "audios": [
        {"array": np.zeros(16000, dtype=np.float32), "text": "hi"}]}]], ["fine"])
    assert torch.isfinite(model(**batch, loss_only=True).loss)
