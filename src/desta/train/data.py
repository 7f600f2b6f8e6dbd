"""Training data for `desta train`: the self-generated records (JSONL shards in paths.generated) as a map-style
dataset that decodes each clip's audio to 16 kHz, plus a deterministic, resumable, length-bucketed batch sampler.

A corrupt or missing clip does not stop training: the item comes back marked `error` and the collator drops and
counts it. The sampler is a pure function of (seed, epoch), so a resumed run sees exactly the same batches.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from copy import deepcopy
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Sampler

from desta.data.audio import AudioError, load_audio
from desta.records import read_records

log = logging.getLogger(__name__)

AUDIO_TOKENS_ESTIMATE = 64  # per clip: the connector's prompt_size; only used to sort by length


def read_generated(generated_dir: str | Path, splits: list[str]) -> list[dict[str, Any]]:
    """Records of the given splits in a stable order (finished shards by name, then line)."""
    return list(read_records(generated_dir, splits))


def check_record(rec: dict[str, Any], where: str) -> None:
    """Fail early, naming the record and the field, when a record cannot be trained on."""
    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"{where}: record {rec.get('id')!r} has no `messages` list; regenerate it (desta generate)")
    if not isinstance(rec.get("response"), str) or not rec["response"].strip():
        raise ValueError(f"{where}: record {rec.get('id')!r} has an empty `response`; run `desta validate`")
    if not any(m.get("audios") for m in msgs if isinstance(m, dict)):
        raise ValueError(f"{where}: record {rec.get('id')!r} has no `audios` in any message; each training record "
                         "needs the clip path in messages[].audios[].audio")


def length_estimate(rec: dict[str, Any]) -> int:
    """Approximate LLM tokens (chars / 4 + audio + transcription), for bucketing only."""
    text = sum(len(str(m.get("content", ""))) for m in rec["messages"]) + len(rec["response"])
    audios = [a for m in rec["messages"] for a in (m.get("audios") or [])]
    trans = sum(len(a.get("text") or "") for a in audios)
    return (text + trans) // 4 + AUDIO_TOKENS_ESTIMATE * len(audios)


class GeneratedDataset(Dataset):
    """Item i -> {"id", "messages" (audio entries carry "array": float32 [t] at 16 kHz), "response", "length",
};
    or {"id", "error": reason, "path"} when a clip cannot be decoded (dropped and counted by the collator)."""

    def __init__(self, records: list[dict[str, Any]], audio_root: str | Path | None = None, where: str = ""):
        for rec in records:
            check_record(rec, where or "generated set")
        self.records = records
        self.audio_root = Path(audio_root) if audio_root else None
        self.lengths = [length_estimate(r) for r in records]

    def __len__(self) -> int:
        return len(self.records)

    def resolve(self, path: str) -> Path:
        p = Path(path)
        if p.is_absolute() or self.audio_root is None or p.exists():
            return p
        return self.audio_root / p

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.records[i]
        messages = deepcopy(rec["messages"])
        try:
            for m in messages:
                for a in m.get("audios") or []:
                    a["array"] = load_audio(self.resolve(a["audio"]))
        except AudioError as err:
            return {"id": rec.get("id"), "error": err.reason, "path": err.path}
        return {"id": rec.get("id"), "messages": messages, "response": rec["response"], "length": self.lengths[i]}


class BucketBatchSampler(Sampler[list[int]]):
    """Length-bucketed batches: shuffle (seed, epoch), cut into pools of `pool` batches, sort each pool by length,
    split into batches, shuffle the batch order. Each rank takes every world-th batch (equal counts). With
    `start` (a resume), the first `start` batches of the epoch are skipped without loading anything."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, bucket: bool = True, pool: int = 50,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, shuffle: bool = True):
        self.lengths, self.batch_size, self.seed = lengths, batch_size, seed
        self.bucket, self.pool, self.rank, self.world = bucket, pool, rank, world_size
        self.drop_last, self.shuffle = drop_last, shuffle
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def epoch_batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        idx = list(range(len(self.lengths)))
        if self.shuffle:
            rng.shuffle(idx)
        span = self.batch_size * self.pool
        batches: list[list[int]] = []
        for lo in range(0, len(idx), span):
            chunk = idx[lo:lo + span]
            if self.bucket:
                chunk.sort(key=lambda i: self.lengths[i])
            batches += [chunk[j:j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        if self.shuffle:
            rng.shuffle(batches)
        per_rank = len(batches) // self.world if self.world > 1 else len(batches)
        return batches[self.rank::self.world][:per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches()[self.start:]

    def __len__(self) -> int:
        return max(0, len(self.epoch_batches()) - self.start)
