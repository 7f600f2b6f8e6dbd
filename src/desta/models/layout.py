"""LLM input layout of DeSTA2.5 (desta.md): chat template, <|AUDIO|> slots, audio windows, labels and padding.

Used only by `DeSTA25AudioModel.build_inputs` (desta/models/audio_llm.py), the one place inputs are laid out;
the messages themselves come from desta.conversation.
Per audio slot: `<start_audio>` [P placeholder ids per 30 s window] [transcription tokens] `<end_audio>`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from desta.conversation import AUDIO, END, START
from desta.data.audio import AudioError, load_audio

IGNORE = -100
_RESERVED = re.compile(r"<\|?(reserved|unused)[\w-]*\|?>|\[unused\d+\]", re.IGNORECASE)


@dataclass
class AudioSlot:
    """One audio of a message: a path and/or an already decoded 16 kHz mono array, and an optional transcription."""

    path: str | None
    text: str | None
    array: np.ndarray | None = None
    n_windows: int = 0

    @property
    def name(self) -> str:
        return self.path or "<in-memory audio>"


@dataclass
class Row:
    ids: list[int]
    labels: list[int]
    starts: list[int] = field(default_factory=list)  # column of each window's first placeholder


def _audio_slots(msg: dict, index: int) -> list[AudioSlot]:
    audios = msg.get("audios") or []
    n_markers = msg["content"].count(AUDIO)
    if n_markers != len(audios):
        raise ValueError(f"message {index} ({msg['role']}): content has {n_markers} {AUDIO} marker(s) but "
                         f"{len(audios)} entr(y/ies) in `audios`; put exactly one {AUDIO} per audio, in order")
    slots = []
    for a in audios:
        if not isinstance(a, dict) or ("audio" not in a and "array" not in a):
            raise ValueError(f"message {index}: each `audios` entry must be a dict like {{'audio': 'clip.wav', "
                             f"'text': None}}; got {a!r}")
        slots.append(AudioSlot(a.get("audio") and str(a["audio"]), a.get("text"), a.get("array")))
    return slots


@dataclass
class ConversationLayout:
    messages: list[dict[str, str]]  # what the chat template sees (audio markers wrapped, `audios` removed)
    audios: list[AudioSlot]

    @classmethod
    def from_messages(cls, conversation: list[dict], system_prompt: str) -> ConversationLayout:
        if not conversation or not all(isinstance(m, dict) and "role" in m and "content" in m for m in conversation):
            raise ValueError("a conversation must be a non-empty list of {'role': ..., 'content': ...} dicts")
        msgs = list(conversation)
        if msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system_prompt}, *msgs]
        out, slots = [], []
        for i, m in enumerate(msgs):
            slots += _audio_slots(m, i)
            content = m["content"].replace(f"{START}{AUDIO}{END}", AUDIO).replace(AUDIO, f"{START}{AUDIO}{END}")
            out.append({"role": m["role"], "content": content})
        return cls(out, slots)

    def token_ids(self, tokenizer: Any, cfg: Any, response: str | None) -> Row:
        """Prompt (+ response) -> ids with P placeholders per audio window; labels only on the assistant turn."""
        prompt = tokenizer.apply_chat_template(self.messages, tokenize=False, add_generation_prompt=True)
        parts = prompt.split(AUDIO)
        if len(parts) != len(self.audios) + 1:
            raise ValueError(f"the chat template changed the number of {AUDIO} markers ({len(parts) - 1} vs "
                             f"{len(self.audios)} audios); use a template that keeps message content verbatim")
        row = Row([], [])
        for i, part in enumerate(parts):
            row.ids += _encode(tokenizer, part)
            if i == len(self.audios):
                break
            slot = self.audios[i]
            for _ in range(slot.n_windows):
                row.starts.append(len(row.ids))
                row.ids += [cfg.placeholder_id] * cfg.prompt_size
            if cfg.use_transcription and slot.text and slot.text.strip():
                row.ids += _encode(tokenizer, slot.text.strip())
        row.labels = [IGNORE] * len(row.ids)
        if response is not None:
            target, rest = _assistant_turn(tokenizer, self.messages, prompt, response)
            t_ids, r_ids = _encode(tokenizer, target), _encode(tokenizer, rest)
            row.ids += t_ids + r_ids
            row.labels += t_ids + [IGNORE] * len(r_ids)
        return row


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def _assistant_turn(tokenizer: Any, messages: list[dict], prompt: str, response: str) -> tuple[str, str]:
    """(response + end-of-turn token, trailing text) as the chat template writes the assistant turn."""
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": response}], tokenize=False)
    if full.startswith(prompt) and full[len(prompt):].startswith(response):
        turn = full[len(prompt):]
        target = turn.rstrip()
        return target, turn[len(target):]
    return response + (tokenizer.eos_token or ""), ""


def placeholder_token(tokenizer: Any) -> int:
    """Id filling the audio query slots (its embedding is replaced, so the LLM stays unchanged): a reserved/unused
    special token when the vocabulary has one (Llama 3: <|reserved_special_token_87|>, as the official code),
    else the unknown token, else the pad/eos token."""
    vocab = tokenizer.get_vocab()
    if "<|reserved_special_token_87|>" in vocab:
        return vocab["<|reserved_special_token_87|>"]
    specials = {str(t): i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items()}
    reserved = sorted(i for t, i in specials.items() if _RESERVED.fullmatch(t))
    if reserved:
        return reserved[-1]
    for candidate in (tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def load_windows(slots: list[AudioSlot], feature_extractor: Any, cfg: Any) -> tuple[list[np.ndarray], list[int]]:
    """Decode every slot (16 kHz mono) and cut it into Whisper windows (30 s); returns (windows, owning slot index).
    Longer than model.max_audio_seconds: error with long_audio=error; chunk mode allows at most model.max_chunks."""
    sr, win = feature_extractor.sampling_rate, feature_extractor.n_samples
    windows, owners = [], []
    for i, slot in enumerate(slots):
        wave = load_audio(slot.path, sr) if slot.array is None else np.asarray(slot.array, dtype=np.float32)
        if getattr(cfg, "official_forward", False):
            wave = wave[:win]  # the official model sees the first 30 s only (its feature extractor truncates)
        if wave.ndim != 1:
            raise AudioError(slot.name, "shape", f"audio array must be 1-D mono at {sr} Hz, got shape {wave.shape}")
        if wave.size == 0:
            raise AudioError(slot.name, "empty", "the audio holds no samples; remove it or re-record it")
        seconds = wave.size / sr
        if seconds > cfg.max_audio_seconds and cfg.long_audio == "error":
            raise AudioError(slot.name, "too_long", f"{seconds:.1f} s is longer than model.max_audio_seconds="
                             f"{cfg.max_audio_seconds}; trim the file or set model.long_audio: chunk")
        k = math.ceil(wave.size / win)
        if k > cfg.max_chunks:
            raise AudioError(slot.name, "too_long", f"{seconds:.1f} s needs {k} windows of {win // sr} s, more than "
                             f"model.max_chunks={cfg.max_chunks}; raise model.max_chunks or split the file")
        slot.n_windows = k
        windows += [wave[j * win:(j + 1) * win] for j in range(k)]
        owners += [i] * k
    return windows, owners


def pad_windows(windows: list[torch.Tensor], frames: torch.Tensor) -> torch.Tensor | None:
    """Per-window tapped states [L, frames_i, d] -> [n, L, max(frames), d], zero-padded (the connector masks it)."""
    if not windows:
        return None
    first = windows[0]
    out = first.new_zeros(len(windows), first.shape[0], int(frames.max()), first.shape[-1])
    for j, w in enumerate(windows):
        out[j, :, :w.shape[1]] = w
    return out


def pad_id(tokenizer: Any) -> int:
    """The tokenizer's pad token, or its end-of-sequence token where it has none (SmolLM2, Llama 3)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def pad_batch(rows: list[Row], tokenizer: Any, left: bool, with_labels: bool) -> dict[str, torch.Tensor]:
    """Rows -> input_ids / attention_mask (/ labels) [b, t] and audio_batch_index / audio_positions [n]."""
    pad = pad_id(tokenizer)
    t = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    labels = torch.full((len(rows), t), IGNORE, dtype=torch.long)
    index, positions = [], []
    for b, r in enumerate(rows):
        off = t - len(r.ids) if left else 0
        ids[b, off:off + len(r.ids)] = torch.tensor(r.ids, dtype=torch.long)
        mask[b, off:off + len(r.ids)] = 1
        labels[b, off:off + len(r.ids)] = torch.tensor(r.labels, dtype=torch.long)
        index += [b] * len(r.starts)
        positions += [off + s for s in r.starts]
    out = {"input_ids": ids, "attention_mask": mask, "audio_batch_index": torch.tensor(index, dtype=torch.long),
           "audio_positions": torch.tensor(positions, dtype=torch.long)}
    if with_labels:
        out["labels"] = labels
    return out
