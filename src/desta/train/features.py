"""Caches that make CPU training of the connector several times faster, used by `desta train` (train.feature_cache):

- EncoderCache: the frozen Whisper encoder's tapped-layer states are a pure function of the clip, so they are
  computed once per clip (first time it is met), kept in memory as fp16 and fed to the model as `audio_hidden`.
  Every use (first or later, cached or not) reads the fp16 copy, so a resumed run sees bit-identical inputs. The
  cache holds at most train.feature_cache_max_mb per process: clips met after it is full are encoded every time
  they come (same inputs, no memory growth), so a data set larger than the bound costs speed, not memory.
- transcribe_missing: records whose audio has no transcription (`text: null`, e.g. sound/music clips) would make
  the model run Whisper ASR inside every batch; it is run once per clip here (same greedy decode, same windows) and
  the dataset fills the text in. Results persist in <paths.checkpoints>/asr_cache.json (keyed by encoder hash).
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
    """Row key -> tapped states of that row's windows, each [L, T_i, d] fp16 on CPU (T_i = its valid frames), up to
    `max_bytes` of states in all; rows met once it is full are encoded each time (counted in `uncached`)."""

    def __init__(self, model: nn.Module, max_bytes: int):
        self.model, self.max_bytes = model, max_bytes
        self.store: dict[str, list[torch.Tensor]] = {}
        self.hits = self.misses = self.uncached = self.bytes = 0

    def attach(self, inputs: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
        """Return inputs with `audio_hidden` [n, L, T, d] (T = max frames) instead of `input_features`."""
        frames, rows = inputs.get("audio_frames"), inputs.get("audio_batch_index")
        if frames is None or rows is None or frames.numel() == 0:
            return inputs
        windows = [[int(i) for i in (rows == r).nonzero().flatten()] for r in range(len(keys))]
        missing = [r for r, k in enumerate(keys) if k not in self.store and windows[r]]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh: dict[str, list[torch.Tensor]] = {}
        if missing:
            idx = [i for r in missing for i in windows[r]]
            states = self.model.encode_audio(inputs["input_features"][idx], frames[idx]).to("cpu", torch.float16)
            pos = 0
            for r in missing:
                fresh[keys[r]] = [states[pos + j, :, :int(frames[i])].clone() for j, i in enumerate(windows[r])]
                pos += len(windows[r])
                self.keep(keys[r], fresh[keys[r]])
        per_window: list[torch.Tensor | None] = [None] * frames.numel()
        for r, k in enumerate(keys):
            for j, i in enumerate(windows[r]):
                per_window[i] = (self.store.get(k) or fresh[k])[j]
        out = {k: v for k, v in inputs.items() if k != "input_features"}
        out["audio_hidden"] = pad_windows(per_window, frames)  # fp16, like the stored states
        return out

    def keep(self, key: str, states: list[torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in states)
        if key in self.store:
            return
        if self.bytes + size > self.max_bytes:
            if not self.uncached:
                log.info("encoder cache full (%.0f MiB, train.feature_cache_max_mb); clips not in it are encoded "
                         "every time they come", self.bytes / 2**20)
            self.uncached += 1
            return
        self.store[key] = states
        self.bytes += size

    def nbytes(self) -> int:
        return self.bytes


def transcribe_missing(model: nn.Module, paths: list[str], cache_file: Path, batch_size: int = 8,
                       write: bool = True) -> dict[str, str]:
    """Transcripts of the clips whose records carry `text: null` (audio path/URI -> text), transcribed once per
    clip and kept in cache_file for later runs. Unreadable clips get none (the dataset skips and counts them later);
    {} when the model feeds no transcription."""
    if not paths or not getattr(model.config, "use_transcription", False):
        return {}
    key_prefix = f"{model.config.encoder_hash}:"
    known: dict[str, str] = json.loads(cache_file.read_text()) if cache_file.is_file() else {}
    todo = sorted(set(paths) - {k.removeprefix(key_prefix) for k in known if k.startswith(key_prefix)})
    for lo in range(0, len(todo), batch_size):
        for path, text in _transcribe(model, todo[lo:lo + batch_size]).items():
            known[key_prefix + path] = text
    if todo and write:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cache_file.write_text(json.dumps(known, indent=0, ensure_ascii=False))
        log.info("transcribed %d clip(s) without a transcript once (cached in %s)", len(todo), cache_file)
    return {p: known[key_prefix + p] for p in paths if key_prefix + p in known}


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
