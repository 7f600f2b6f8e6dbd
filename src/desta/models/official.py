"""Import a checkpoint in the official DeSTA2.5-Audio layout as a desta model dir (`desta models import-official`).

The official layout (kehanlu/DeSTA2.5-Audio @ 5503dfc, desta/models/modeling_desta25.py; the HF release
DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B): `config.json` (model_type "desta25": llm_model_id, encoder_model_id,
connector_mode "qformer_1", qformer_num_hidden_layers, prompt_size, use_lora, audio_locator, placeholder_token) and
`model.safetensors` holding only the trainable tensors, named as the official module tree names them:
`perception.connector.layer_prompts.<k>` [1, P, d], `perception.connector.layer_weights` [P, L],
`perception.connector.qformer.<BertEncoder names>`, `perception.connector.proj.0` (LayerNorm) / `.proj.1` (Linear),
and with use_lora `llm_model.<...>.lora_{A,B}.default.weight` (r 16, alpha 16, dropout 0.1 on q/k/v projections).
The result is `desta_config.json` + `trainable.safetensors` with `official_forward: true`, so `desta chat` and
`desta evaluate` run the released connector the way it was trained (desta/models/audio_llm.py).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from desta.config import LoraConfig, ModelConfig
from desta.models.audio_llm import CheckpointError, DeSTA25AudioModel

log = logging.getLogger(__name__)

OFFICIAL_CONFIG, OFFICIAL_WEIGHTS = "config.json", "model.safetensors"
# The official connector taps these layers and refuses any other encoder id (QformerConnector.__init__).
TARGET_LAYERS = {"openai/whisper-large-v3": [7, 15, 23, 31], "openai/whisper-medium": [5, 11, 17, 23],
                 "openai/whisper-small": [2, 5, 8, 11], "openai/whisper-tiny": [0, 1, 2, 3]}
QFORMER_FFN = 3072  # the official Q-Former is BertConfig() with width/heads/layers changed: BERT's FFN size stays
OFFICIAL_LORA = {"r": 16, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "k_proj", "v_proj"]}
ASR_MAX_NEW_TOKENS = 128  # the official generate() transcribes with max_new_tokens=128
PREFIX = "perception.connector."


def read_official_config(src: Path) -> dict:
    path = src / OFFICIAL_CONFIG
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; pass the directory of an official DeSTA2.5 checkpoint (config.json "
                              f"+ {OFFICIAL_WEIGHTS}, e.g. a download of DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B)")
    cfg = json.loads(path.read_text())
    need = ("llm_model_id", "encoder_model_id", "connector_mode", "qformer_num_hidden_layers", "prompt_size")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise CheckpointError(f"{path}: missing field(s) {missing}; this is not a DeSTA2.5 config.json")
    if cfg["connector_mode"] != "qformer_1":
        raise CheckpointError(f"{path}: field connector_mode is {cfg['connector_mode']!r}; only the released "
                              "'qformer_1' connector can be imported")
    if cfg["encoder_model_id"] not in TARGET_LAYERS:
        raise CheckpointError(f"{path}: field encoder_model_id is {cfg['encoder_model_id']!r}; the official code "
                              f"defines tapped layers only for {sorted(TARGET_LAYERS)}")
    return cfg


def model_settings(cfg: dict, base: ModelConfig, encoder: str | None, llm: str | None) -> ModelConfig:
    """params.model (dtype, system prompt, ...) with the architecture replaced by the official checkpoint's."""
    lora = LoraConfig(enabled=bool(cfg.get("use_lora", False)), **OFFICIAL_LORA)
    return base.model_copy(update={
        "encoder": encoder or cfg["encoder_model_id"], "llm": llm or cfg["llm_model_id"],
        "target_layers": TARGET_LAYERS[cfg["encoder_model_id"]], "prompt_size": int(cfg["prompt_size"]),
        "qformer_layers": int(cfg["qformer_num_hidden_layers"]), "qformer_heads": None, "qformer_ffn": QFORMER_FFN,
        "lora": lora, "use_transcription": True, "asr_max_new_tokens": ASR_MAX_NEW_TOKENS})


def rename(tensors: dict[str, torch.Tensor], n_layers: int, source: str) -> dict[str, torch.Tensor]:
    """Official tensor names -> this project's (desta/models/connector.py and the PEFT-wrapped language model)."""
    out: dict[str, torch.Tensor] = {}
    prompts = [f"{PREFIX}layer_prompts.{k}" for k in range(n_layers)]
    missing = [p for p in prompts if p not in tensors]
    if missing:
        raise CheckpointError(f"{source}: missing {missing}; the checkpoint does not match its config.json")
    out["connector.queries"] = torch.cat([tensors[p] for p in prompts], dim=0)  # L x [1, P, d] -> [L, P, d]
    fixed = {f"{PREFIX}layer_weights": "connector.layer_weights", f"{PREFIX}proj.0.weight": "connector.norm.weight",
             f"{PREFIX}proj.0.bias": "connector.norm.bias", f"{PREFIX}proj.1.weight": "connector.proj.weight",
             f"{PREFIX}proj.1.bias": "connector.proj.bias"}
    for name, t in tensors.items():
        if name in prompts:
            continue
        if name in fixed:
            out[fixed[name]] = t
        elif name.startswith(f"{PREFIX}qformer."):
            out["connector." + name[len(PREFIX):]] = t
        elif name.startswith("llm_model.") and "lora_" in name:
            out["language_model.base_model.model." + name[len("llm_model."):]] = t
        else:
            raise CheckpointError(f"{source}: unexpected tensor {name!r}; not a DeSTA2.5 qformer_1 checkpoint")
    return out


def import_official(src: str | Path, out: str | Path, base: ModelConfig, cache_dir: Path | None = None,
                    encoder: str | None = None, llm: str | None = None) -> Path:
    """Convert `src` (official layout) into `out` (desta layout, official_forward). `encoder` / `llm` replace the
    config's model ids (a local directory or a store reference holding the same weights). Loads both backbones:
    the tensors are checked against the built model (names and shapes) and the backbone hashes are recorded."""
    src = Path(src)
    cfg = read_official_config(src)
    weights = src / OFFICIAL_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(f"{weights}: missing; the official checkpoint keeps its trainable tensors there")
    settings = model_settings(cfg, base, encoder, llm)
    model = DeSTA25AudioModel.from_params(settings, cache_dir, official_forward=True)
    dtype = model.connector.proj.weight.dtype
    tensors = {k: v.to(dtype) for k, v in rename(load_file(str(weights)), len(settings.target_layers),
                                                 str(weights)).items()}
    model.load_trainable(tensors, str(weights))
    path = model.save_pretrained(out)
    log.info("imported %s -> %s (%d tensors, encoder %s, llm %s)", src, path, len(tensors), settings.encoder,
             settings.llm)
    return path
