"""A tiny audio-LM with the DeSTA25AudioModel training contract (build_inputs / forward(**inputs).loss /
trainable_state_dict / param_counts / save_pretrained), plus a tiny generated set on disk, for the train tests.

Frozen "encoder" over real Whisper log-mel features -> trainable connector (with dropout, so resume must restore
RNG) -> frozen byte-level LM. Labels are -100 everywhere except the response bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch import nn
from transformers import WhisperFeatureExtractor

N_MELS, N_FRAMES, N_QUERIES, D = 80, 3000, 4, 32


class TinyAudioLM(nn.Module):
    def __init__(self, seed: int = 0, dropout: float = 0.1):
        super().__init__()
        torch.manual_seed(seed)
        self.audio_encoder = nn.Linear(N_MELS, D)
        self.connector = nn.Sequential(nn.Linear(D, N_QUERIES * D), nn.Dropout(dropout), nn.Tanh(),
                                       nn.Linear(N_QUERIES * D, N_QUERIES * D))
        self.language_model = nn.ModuleDict({"embed": nn.Embedding(256, D), "rnn": nn.GRU(D, D, batch_first=True),
                                             "head": nn.Linear(D, 256)})
        for part in (self.audio_encoder, self.language_model):
            part.requires_grad_(False)
        self.fe = WhisperFeatureExtractor(feature_size=N_MELS)
        self.seen: list[tuple] = []  # per forward: (each row's response, its label tokens)

    def build_inputs(self, conversations, responses):
        feats, ids, labels = [], [], []
        for conv, resp in zip(conversations, responses, strict=True):
            audio = [a["array"] for m in conv for a in (m.get("audios") or [])][0]
            feats.append(self.fe(audio, sampling_rate=16000, return_tensors="pt").input_features[0])
            prompt = " ".join(f"{m['role']}: {m['content']}" for m in conv).encode()[-48:]
            answer = resp.encode()[:48]
            ids.append(list(prompt) + list(answer))
            labels.append([-100] * len(prompt) + list(answer))
        width = max(len(x) for x in ids)
        pad = [width - len(x) for x in ids]
        return {"input_features": torch.stack(feats),
                "input_ids": torch.tensor([x + [0] * p for x, p in zip(ids, pad, strict=True)]),
                "attention_mask": torch.tensor([[1] * len(x) + [0] * p for x, p in zip(ids, pad, strict=True)]),
                "labels": torch.tensor([x + [-100] * p for x, p in zip(labels, pad, strict=True)])}

    def forward(self, input_features, input_ids, attention_mask, labels, loss_only=False):  # loss only either way
        audio = self.audio_encoder(input_features.transpose(1, 2)).mean(1)  # [b, d]
        queries = self.connector(audio).view(-1, N_QUERIES, D)  # [b, q, d]
        x = self.language_model["embed"](input_ids) + queries.mean(1, keepdim=True)  # [b, t, d]: audio conditions all
        h, _ = self.language_model["rnn"](x)
        logits = self.language_model["head"](h[:, :-1])  # position i predicts token i + 1
        targets = labels[:, 1:]
        self.seen.append(([bytes(r[r != -100].tolist()).decode() for r in targets], (targets != -100).sum(1)))
        loss = nn.functional.cross_entropy(logits.reshape(-1, 256).float(), targets.reshape(-1), ignore_index=-100)
        return type("Out", (), {"loss": loss})()

    def trainable_state_dict(self):
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().clone() for k, v in self.state_dict().items() if k in names}

    def param_counts(self):
        t = sum(p.numel() for p in self.parameters() if p.requires_grad)
        f = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return {"trainable": t, "frozen": f, "total": t + f}

    def save_pretrained(self, out):
        Path(out).mkdir(parents=True, exist_ok=True)
        torch.save(self.trainable_state_dict(), Path(out) / "connector.pt")


def make_generated(root: Path, n_train: int = 24, n_valid: int = 8, corrupt: int = 0,
                   transcript: str | None = None) -> Path:
    """Tiny clips (0.3 s tones; low = 'low', high = 'high') and records in root/generated/shard-00000.jsonl."""
    audio_dir, gen = root / "audio", root / "generated"
    audio_dir.mkdir(parents=True, exist_ok=True)
    gen.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n_train + n_valid):
        high = i % 2 == 1
        t = np.arange(int(0.3 * 16000)) / 16000
        path = audio_dir / f"clip{i:03d}.wav"
        sf.write(path, (0.3 * np.sin(2 * np.pi * (1800 if high else 200) * t)).astype(np.float32), 16000)
        if i < corrupt:
            path.write_bytes(b"RIFF not really a wav file")
        rows.append({"id": f"demo/clip{i:03d}-p0", "clip_id": f"demo/clip{i:03d}", "split":
                     "train" if i < n_train else "valid", "prompt": "Is the tone high or low?",
                     "response": "The tone is high." if high else "The tone is low.",
                     "messages": [{"role": "system", "content": "Focus on the audio clips and instructions."},
                                  {"role": "user", "content": "Is the tone high or low? <start_audio><|AUDIO|>"
                                   "<end_audio>", "audios": [{"audio": str(path), "text": transcript}]}]})
    (gen / "shard-00000.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return gen


def make_manifest(root: Path, n_train: int = 24) -> Path:
    """root/manifests with the train clips of make_generated (same audio): high tones 'Female', low 'Male'."""
    from desta.data.manifest import Clip, write_shard

    clips = [Clip(id=f"demo/clip{i:03d}", audio=str(root / "audio" / f"clip{i:03d}.wav"), duration=0.3,
                  sample_rate=16000, channels=1, source="demo", domain="speech", split="train",
                  gender="Female" if i % 2 else "Male") for i in range(n_train)]
    write_shard(clips, root / "manifests" / "manifest-00000.parquet")
    return root / "manifests"
