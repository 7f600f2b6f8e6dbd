"""Caches that make CPU training of the connector several times faster, used by `desta train` (train.feature_cache):

- EncoderCache: the frozen Whisper encoder's tapped-layer states are a pure function of the clip, so they are
  computed once per clip (first time it is met), kept in memory as fp16 and fed to the model as `audio_hidden`.
  Every use (first or later) reads the fp16 copy, so a resumed run sees bit-identical inputs.
- fill_transcripts: records whose audio has no transcription (`text: null`, e.g. sound/music clips) would make the
  model run Whisper ASR inside every batch; it is run once per clip here (same greedy decode, same windows) and the
  text is written into the records. Results persist in <paths.checkpoints>/asr_cache.json (keyed by encoder hash).
Shapes: n = audio windows in a batch, L = tapped layers, T = encoder frames, d = encoder width.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from desta.data.audio import AudioError, load_audio
from desta.models.layout import pad_windows

log = logging.getLogger(__name__)


def supports_cache(model: nn.Module) -> bool:
    """The model exposes `encode_audio(input_features, audio_frames) -> [n, L, T, d]` and accepts `audio_hidden`."""
    return hasattr(model, "encode_audio") and hasattr(model, "config") and hasattr(model.config, "resolved_layers")


def row_keys(conversations: list[list[dict[str, Any]]]) -> list[str]:
    """One key per conversation: its audio paths in order (the windows of a row are contiguous in the batch)."""
    return ["|".join(str(a.get("audio")) for m in conv for a in (m.get("audios") or [])) for conv in conversations]


class EncoderCache:
    """Row key -> tapped states of that row's windows, each [L, T_i, d] fp16 on CPU (T_i = its valid frames)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.store: dict[str, list[torch.Tensor]] = {}
        self.hits = self.misses = 0

    def attach(self, inputs: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
        """Return inputs with `audio_hidden` [n, L, T, d] (T = max frames) instead of `input_features`."""
        frames, rows = inputs.get("audio_frames"), inputs.get("audio_batch_index")
        if frames is None or rows is None or frames.numel() == 0:
            return inputs
        windows = [[int(i) for i in (rows == r).nonzero().flatten()] for r in range(len(keys))]
        missing = [r for r, k in enumerate(keys) if k not in self.store and windows[r]]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            idx = [i for r in missing for i in windows[r]]
            states = self.model.encode_audio(inputs["input_features"][idx], frames[idx]).to("cpu", torch.float16)
            pos = 0
            for r in missing:
                n = len(windows[r])
                self.store[keys[r]] = [states[pos + j, :, :int(frames[i])].clone() for j, i in
                                       enumerate(windows[r])]
                pos += n
        per_window: list[torch.Tensor | None] = [None] * frames.numel()
        for r, k in enumerate(keys):
            for j, i in enumerate(windows[r]):
                per_window[i] = self.store[k][j]
        out = {k: v for k, v in inputs.items() if k != "input_features"}
        out["audio_hidden"] = pad_windows(per_window, frames)  # fp16, like the stored states
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for ts in self.store.values() for t in ts)


def fill_transcripts(model: nn.Module, records: list[dict[str, Any]], cache_file: Path, batch_size: int = 8,
                     write: bool = True) -> int:
    """Transcribe (once per clip) every audio entry with `text: null` and write the text into the records.
    Returns how many clips were transcribed now (the rest came from cache_file). Unreadable clips are left as they
    are (the dataset skips and counts them later)."""
    if not getattr(model.config, "use_transcription", False):
        return 0
    key_prefix = f"{model.config.encoder_hash}:"
    known: dict[str, str] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    entries = [a for r in records for m in r["messages"] for a in (m.get("audios") or []) if a.get("text") is None]
    todo = sorted({str(a["audio"]) for a in entries} - {k.removeprefix(key_prefix) for k in known
                                                           if k.startswith(key_prefix)})
    for lo in range(0, len(todo), batch_size):
        for path, text in _transcribe(model, todo[lo:lo + batch_size]).items():
            known[key_prefix + path] = text
    for a in entries:
        text = known.get(key_prefix + str(a["audio"]))
        if text is not None:
            a["text"] = text
    if todo and write:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(known, indent=0, ensure_ascii=False))
        log.info("transcribed %d clip(s) without a transcript once (cached in %s)", len(todo), cache_file)
    return len(todo)


def _transcribe(model: nn.Module, paths: list[str]) -> dict[str, str]:
    """The model's own windowing + greedy ASR, as build_inputs would run it, for a few clips."""
    from desta.models.layout import AudioSlot, load_windows

    slots = []
    for p in paths:
        try:
            slots.append(AudioSlot(p, None, load_audio(p)))
        except AudioError:
            continue
    if not slots:
        return {}
    windows, owners = load_windows(slots, model.processor.feature_extractor, model.config)
    fe = model.processor.feature_extractor
    feats = fe(windows, sampling_rate=fe.sampling_rate, return_tensors="pt").input_features
    texts = model.transcribe(feats)
    return {s.path: " ".join(t for t, o in zip(texts, owners, strict=True) if o == i).strip()
            for i, s in enumerate(slots)}
