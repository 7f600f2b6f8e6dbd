"""DeSTA2.5-Audio composite: frozen Whisper -> trainable Q-Former connector -> frozen chat LLM (+ optional LoRA).

Built by `desta train` / `desta evaluate` / `desta chat` from params.yaml's `model:` section. The one place that
lays out LLM inputs is `build_inputs` (layout: desta.md). Shapes: b = conversations, t = tokens, n = audio windows
(one per 30 s of audio), L = tapped layers, T = encoder frames, P = prompt_size, d = encoder width, D = LLM width.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from desta.config import ModelConfig
from desta.models import store
from desta.models.connector import QFormerConnector, default_target_layers, qformer_config
from desta.models.layout import (
    AudioSlot,
    ConversationLayout,
    load_windows,
    pad_batch,
    pad_id,
    placeholder_token,
)

log = logging.getLogger(__name__)


class _WhisperGenerateNoise(logging.Filter):
    """Drops three warnings transformers 5 prints on every Whisper `generate` call although nothing is wrong: the
    processor's generation config carries suppress tokens (Whisper's own generate passes them again), the encoder
    input has no padding to mask, and max_new_tokens deliberately overrides the config's max_length."""

    KNOWN = ("Passing `generation_config` together with generation-related arguments",
             "The attention mask is not set with a batched input",
             "Both `max_new_tokens` (=")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(k in msg for k in self.KNOWN)


logging.getLogger("transformers.generation.utils").addFilter(_WhisperGenerateNoise())

CONFIG_FILE, WEIGHTS_FILE = "desta_config.json", "trainable.safetensors"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(ValueError):
    """A checkpoint does not fit the backbones or the code; the message names the dir, the field and the fix."""


class AudioLLMConfig(ModelConfig):
    """ModelConfig + what a checkpoint needs to be reloaded exactly: backbone hashes and the resolved layout."""

    encoder_hash: str
    llm_hash: str
    resolved_layers: list[int]
    placeholder_id: int
    format_version: int = 1
    # True for checkpoints converted from the official DeSTA2.5 release (`desta models import-official`): the forward
    # pass then follows modeling_desta25.py: each tapped layer's raw output (the last one before Whisper's final
    # LayerNorm), cross-attention over all 1500 frames of the 30 s padded window, only the first 30 s of a clip.
    # False (the project's own training): tapped hidden states (the last one normed), padding masked, long clips
    # chunked. A record of how the weights were trained, not a setting: absent in older files means False.
    official_forward: bool = False

    def model_settings(self) -> ModelConfig:
        return ModelConfig.model_validate(self.model_dump(include=set(ModelConfig.model_fields)))


@dataclass
class GenerationResult:
    text: str
    transcripts: list[str] = field(default_factory=list)


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def weights_hash(module: nn.Module) -> str:
    """Hash of in-memory weights (for backbones passed to `from_parts`, which have no store directory)."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode() + t.detach().float().cpu().numpy().tobytes())
    return "weights:" + h.hexdigest()


class DeSTA25AudioModel(nn.Module):
    """Parts: `audio_encoder` (the full Whisper model: its encoder feeds the connector, its decoder transcribes),
    `connector` (QFormerConnector, trainable), `language_model` (HF causal LM, frozen; LoRA adapters trainable)."""

    def __init__(self, whisper: nn.Module, processor: Any, llm: nn.Module, tokenizer: Any, config: AudioLLMConfig):
        super().__init__()
        self.config, self.processor, self.tokenizer = config, processor, tokenizer
        self.audio_encoder = whisper
        enc_cfg = whisper.config
        n_enc = enc_cfg.encoder_layers
        if any(i >= n_enc for i in config.resolved_layers):
            raise ValueError(f"model.target_layers={config.resolved_layers}: the encoder has {n_enc} layers "
                             f"(indices 0..{n_enc - 1}); fix model.target_layers in params.yaml or set it to null")
        qcfg = qformer_config(enc_cfg.d_model, config.qformer_layers,
                              config.qformer_heads or enc_cfg.encoder_attention_heads, config.qformer_ffn)
        self.connector = QFormerConnector(enc_cfg.d_model, llm.config.get_text_config().hidden_size,
                                          len(config.resolved_layers), config.prompt_size, qcfg)
        if config.lora.enabled:
            llm = _add_lora(llm, config)
        self.language_model = llm
        self.freeze_backbones()
        counts = self.param_counts()
        log.info("DeSTA25AudioModel: trainable %s, frozen %s parameters", f"{counts['trainable']:,}",
                 f"{counts['frozen']:,}")

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def from_parts(cls, whisper, processor, llm, tokenizer, model_cfg: ModelConfig, seed: int = 0,
                   encoder_hash: str | None = None, llm_hash: str | None = None,
                   official_forward: bool = False) -> DeSTA25AudioModel:
        """Compose already-loaded backbones (hashes of the in-memory weights unless given) with a fresh connector."""
        layers = model_cfg.target_layers or default_target_layers(whisper.config.encoder_layers)
        cfg = AudioLLMConfig(**model_cfg.model_dump(), encoder_hash=encoder_hash or weights_hash(whisper),
                             llm_hash=llm_hash or weights_hash(llm), resolved_layers=layers,
                             placeholder_id=placeholder_token(tokenizer), official_forward=official_forward)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(whisper, processor, llm, tokenizer, cfg).eval()  # like HF from_pretrained; train() to train

    @classmethod
    def from_params(cls, model_cfg: ModelConfig, cache_dir: Path | None = None, seed: int = 0,
                    official_forward: bool = False) -> DeSTA25AudioModel:
        """Load both backbones through the offline store (converted once) and add a freshly initialised connector."""
        dtype = _DTYPES[model_cfg.dtype]
        whisper, processor = store.load_whisper(model_cfg.encoder, cache_dir, dtype)
        llm, tokenizer = store.load_llm(model_cfg.llm, cache_dir, dtype)
        return cls.from_parts(whisper, processor, llm, tokenizer, model_cfg, seed,
                              encoder_hash=store.model_hash(store.resolve(model_cfg.encoder, cache_dir)),
                              llm_hash=store.model_hash(store.resolve(model_cfg.llm, cache_dir)),
                              official_forward=official_forward)

    @classmethod
    def from_pretrained(cls, path: str | Path, cache_dir: Path | None = None, parts: tuple | None = None):
        """Rebuild from `save_pretrained` output; refuses backbones whose hashes differ from the recorded ones.
        `parts=(whisper, processor, llm, tokenizer)` uses already-loaded backbones instead of the store."""
        path = Path(path)
        if not is_checkpoint(path):
            raise CheckpointError(f"{path}: no {CONFIG_FILE}; pass a directory written by `desta train` "
                                  "(save_pretrained)")
        saved = AudioLLMConfig.model_validate(json.loads((path / CONFIG_FILE).read_text()))
        if parts is None:
            model = cls.from_params(saved.model_settings(), cache_dir, official_forward=saved.official_forward)
        else:
            model = cls.from_parts(*parts, saved.model_settings(), official_forward=saved.official_forward)
        for name in ("encoder_hash", "llm_hash"):
            if getattr(model.config, name) != getattr(saved, name):
                raise CheckpointError(
                    f"{path / CONFIG_FILE}: field {name} is {getattr(saved, name)} but the loaded backbone "
                    f"({saved.encoder if name == 'encoder_hash' else saved.llm}) hashes to "
                    f"{getattr(model.config, name)}; load the checkpoint with the exact backbone it was trained on")
        model.load_trainable(load_file(str(path / WEIGHTS_FILE)), str(path / WEIGHTS_FILE))
        return model

    def save_pretrained(self, path: str | Path) -> Path:
        """Write only the trainable tensors (safetensors) + the config naming the backbones and their hashes."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.trainable_state_dict().items()}
        save_file(tensors, str(path / WEIGHTS_FILE), metadata={"format": "pt"})
        (path / CONFIG_FILE).write_text(json.dumps(self.config.model_dump(), indent=2))
        return path

    def load_trainable(self, tensors: dict[str, torch.Tensor], source: str = "<state dict>") -> None:
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        if missing or unexpected:
            raise CheckpointError(f"{source}: trainable tensors do not match this model (missing {missing[:5]}, "
                                  f"unexpected {unexpected[:5]}); were model.* settings changed after training?")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for k, v in tensors.items():
                if params[k].shape != v.shape:
                    raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, model expects "
                                          f"{tuple(params[k].shape)}; check model.prompt_size / qformer_* settings")
                params[k].copy_(v)

    # ------------------------------------------------------------------------------------------------ freezing
    def freeze_backbones(self) -> None:
        """Whisper: all frozen. LLM: frozen except LoRA adapters. Connector: trainable. Asserted."""
        for p in self.audio_encoder.parameters():
            p.requires_grad_(False)
        for name, p in self.language_model.named_parameters():
            p.requires_grad_(self.config.lora.enabled and "lora_" in name)
        for p in self.connector.parameters():
            p.requires_grad_(True)
        assert not any(p.requires_grad for p in self.audio_encoder.parameters()), "audio encoder must be frozen"
        assert all("lora_" in n for n, p in self.language_model.named_parameters() if p.requires_grad), \
            "LLM weights other than LoRA adapters must be frozen"

    def train(self, mode: bool = True) -> DeSTA25AudioModel:
        """Backbones always stay in eval mode (no dropout in frozen parts); only the connector/LoRA switch."""
        super().train(mode)
        self.audio_encoder.eval()
        if not self.config.lora.enabled:
            self.language_model.eval()
        return self

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.named_parameters() if p.requires_grad}

    def param_counts(self) -> dict[str, int]:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"trainable": trainable, "frozen": sum(p.numel() for p in self.parameters()) - trainable}

    @property
    def device(self) -> torch.device:
        return self.connector.queries.device

    # ------------------------------------------------------------------------------------------------ audio
    @torch.no_grad()
    def encode_audio(self, input_features: torch.Tensor, audio_frames: torch.Tensor) -> torch.Tensor:
        """Frozen encoder: input_features [n, mel, 3000] -> tapped states [n, L, T, d], T = max(audio_frames)."""
        return self._encode(input_features, audio_frames)[0]

    def _encode(self, input_features: torch.Tensor, audio_frames: torch.Tensor):
        """(tapped states [n, L, T, d], the encoder output): hidden_states[i + 1] per tapped layer i, or with
        official_forward each tapped layer's own output caught by a hook (no final LayerNorm on the last one)."""
        dtype = next(self.audio_encoder.parameters()).dtype
        encoder, layers = self.audio_encoder.model.encoder, self.config.resolved_layers
        raw: dict[int, torch.Tensor] = {}
        hooks = [encoder.layers[i].register_forward_hook(
            lambda _m, _a, out, i=i: raw.__setitem__(i, out[0] if isinstance(out, tuple) else out))
            for i in layers] if self.config.official_forward else []
        try:
            with torch.no_grad():
                enc = encoder(input_features.to(self.device, dtype), output_hidden_states=not hooks)
        finally:
            for h in hooks:
                h.remove()
        t = int(audio_frames.max())
        states = [raw[i] for i in layers] if hooks else [enc.hidden_states[i + 1] for i in layers]
        return torch.stack([s[:, :t] for s in states], dim=1), enc

    @torch.no_grad()
    def transcribe(self, input_features: torch.Tensor, encoder_output: Any = None) -> list[str]:
        """Greedy Whisper transcription per window [n, mel, 3000] -> n strings (stripped)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.config.asr_max_new_tokens}
        if getattr(self.audio_encoder.generation_config, "is_multilingual", False):
            kwargs["task"] = "transcribe"
        if encoder_output is not None:
            kwargs["encoder_outputs"] = encoder_output
        else:
            kwargs["input_features"] = input_features.to(self.device, next(self.audio_encoder.parameters()).dtype)
        ids = self.audio_encoder.generate(**kwargs)
        return [s.strip() for s in self.processor.batch_decode(ids, skip_special_tokens=True)]

    # ------------------------------------------------------------------------------------------------ inputs
    def build_inputs(self, conversations: list[list[dict]], responses: list[str] | None = None
                     ) -> dict[str, torch.Tensor]:
        """Conversations (official message format) -> CPU tensors for `forward`:
        input_ids / attention_mask [b, t] (right-padded with responses, left-padded for generation), labels [b, t]
        (responses only: -100 except response tokens + end-of-turn), input_features [n, mel, 3000],
        audio_frames [n] (valid encoder frames per window), audio_batch_index [n] (row of each window) and
        audio_positions [n] (column of each window's first of P query slots; the P slots are consecutive)."""
        return self.prepare_batch(conversations, responses)[0]

    def prepare_batch(self, conversations: list[list[dict]], responses: list[str] | None, keep_encoder: bool = False,
                 features: bool = True):
        """(`build_inputs` output, per conversation the transcript of each audio). keep_encoder adds the tapped states
        `audio_hidden` when Whisper ran for transcription; features=False leaves out the log-mel features (for callers
        that pass `audio_hidden` themselves, e.g. desta.evaluate.likelihood)."""
        if responses is not None and len(responses) != len(conversations):
            raise ValueError(f"build_inputs: {len(conversations)} conversations but {len(responses)} responses")
        layouts = [ConversationLayout.from_messages(conv, self.config.system_prompt) for conv in conversations]
        slots: list[AudioSlot] = [s for lay in layouts for s in lay.audios]
        windows, owners = load_windows(slots, self.processor.feature_extractor, self.config)
        fe = self.processor.feature_extractor
        need_asr = self.config.use_transcription and any(s.text is None for s in slots)
        mel = (fe(windows, sampling_rate=fe.sampling_rate, return_tensors="pt").input_features if windows
               else torch.zeros(0, fe.feature_size, fe.nb_max_frames)) if features or need_asr else None
        full = self.audio_encoder.config.max_source_positions  # 1500 frames = 30 s
        frames = torch.tensor([full if self.config.official_forward else max(1, min(-(-len(w) // 320), full))
                               for w in windows], dtype=torch.long)
        extra: dict[str, torch.Tensor] = {}
        if need_asr:
            tapped, enc = self._encode(mel, frames)
            texts = self.transcribe(mel, enc)
            for i, s in enumerate(slots):
                if s.text is None:
                    s.text = " ".join(t for t, o in zip(texts, owners, strict=True) if o == i).strip()
            if keep_encoder:
                extra["audio_hidden"] = tapped
        rows = [lay.token_ids(self.tokenizer, self.config, responses[i] if responses else None)
                for i, lay in enumerate(layouts)]
        batch = pad_batch(rows, self.tokenizer, left=responses is None, with_labels=responses is not None)
        batch.update(audio_frames=frames, **extra)
        if mel is not None:
            batch["input_features"] = mel
        transcripts = [[s.text or "" for s in lay.audios] for lay in layouts]
        return batch, transcripts

    def _embed(self, input_ids, input_features=None, audio_frames=None, audio_batch_index=None,
               audio_positions=None, audio_hidden=None) -> torch.Tensor:
        """LLM input embeddings [b, t, D] with each window's P query slots replaced by connector outputs."""
        embeds = self.language_model.get_input_embeddings()(input_ids.to(self.device))
        if audio_frames is None or audio_frames.numel() == 0:
            return embeds
        if audio_hidden is None:
            audio_hidden = self.encode_audio(input_features, audio_frames)
        dtype = self.connector.proj.weight.dtype  # bf16 under DeepSpeed bf16, else fp32
        queries = self.connector(audio_hidden.to(self.device, dtype), audio_frames)  # [n, P, D]
        p = self.config.prompt_size
        rows = audio_batch_index.to(self.device)[:, None].expand(-1, p)
        cols = audio_positions.to(self.device)[:, None] + torch.arange(p, device=self.device)
        return embeds.index_put((rows, cols), queries.to(embeds.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None,
                loss_only: bool = False, **audio: torch.Tensor) -> CausalLMOutputWithPast:
        """Teacher-forced pass; `.loss` = mean cross-entropy over label tokens (labels != -100), `.logits` [b, t, V].

        loss_only (training): the LM head runs only where a label follows, not over the vocabulary at every position
        (the head is a fifth of a 135M LLM's FLOPs and most positions are prompt); `.logits` is then None."""
        embeds = self._embed(input_ids, **audio)
        mask = attention_mask.to(self.device)
        if labels is None or not loss_only:
            out = self.language_model(inputs_embeds=embeds, attention_mask=mask,
                                      labels=None if labels is None else labels.to(self.device))
            return CausalLMOutputWithPast(loss=out.loss, logits=out.logits)
        targets = labels.to(self.device)[:, 1:]
        keep = targets != -100
        hidden = self.language_model.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        logits = self.language_model.get_output_embeddings()(hidden[:, :-1][keep])
        loss = nn.functional.cross_entropy(logits.float(), targets[keep])
        return CausalLMOutputWithPast(loss=loss, logits=None)

    # ------------------------------------------------------------------------------------------------ generate
    @torch.no_grad()
    def generate(self, messages: list[dict] | list[list[dict]], max_new_tokens: int = 128, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 8,
                 min_new_tokens: int = 0) -> list[GenerationResult]:
        """One conversation or a list of them (official format) -> one GenerationResult per conversation.
        Left-padded batches of `batch_size`; Whisper transcribes audios whose `text` is None (encoder run once)."""
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        sampling: dict[str, Any] = {"do_sample": do_sample}
        if do_sample:
            sampling.update(temperature=temperature, top_p=top_p)
        results: list[GenerationResult] = []
        for start in range(0, len(convs), batch_size):
            batch, transcripts = self.prepare_batch(convs[start:start + batch_size], None, keep_encoder=True)
            audio = {k: batch[k] for k in ("input_features", "audio_frames", "audio_batch_index", "audio_positions",
                                           "audio_hidden") if k in batch}
            embeds = self._embed(batch["input_ids"], **audio)
            out = self.language_model.generate(
                inputs_embeds=embeds, attention_mask=batch["attention_mask"].to(self.device),
                max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, pad_token_id=pad_id(self.tokenizer),
                eos_token_id=_stop_ids(self.language_model, self.tokenizer), **sampling)
            texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
            results += [GenerationResult(t.strip(), tr) for t, tr in zip(texts, transcripts, strict=True)]
        return results


def _stop_ids(llm, tokenizer) -> list[int]:
    eos = llm.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def _add_lora(llm: nn.Module, config: ModelConfig) -> nn.Module:
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    lcfg = config.lora
    return get_peft_model(llm, PeftLoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                                              target_modules=list(lcfg.target_modules), task_type="CAUSAL_LM"))
