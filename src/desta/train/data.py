"""Training data for `desta train`: the self-generated records (JSONL shards in paths.generated), read by offset,
and a deterministic, resumable, length-bucketed sampler that splits every global batch over the ranks.

Memory does not grow with the data set: `RecordIndex` scans the shards once and keeps, per usable record, only where
its line is (shard, byte offset, byte length) and its estimated length, 20 bytes instead of the ~5 KB record;
`GeneratedDataset` reads a record back when its item is asked for and decodes the clip (a local path or an s3://
URI) to 16 kHz. `benchmarks/train_memory.py` prints the peak RSS per rank at two data-set sizes.
A corrupt or missing clip does not stop training: the item comes back marked `error` and the collator drops and
counts it. The sampler is a pure function of (seed, epoch, micro-batch x ranks), so a resumed run sees exactly the
same batches, and N ranks at micro-batch m see the batches one rank sees at N x m.
"""

from __future__ import annotations

import hashlib
import logging
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Sampler

from desta.data.audio import AudioError, load_audio
from desta.records import SHARD_GLOB, finished_shards, iter_jsonl_at, read_jsonl_at

log = logging.getLogger(__name__)

AUDIO_TOKENS_ESTIMATE = 64  # per clip: the connector's prompt_size; only used to sort by length


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


@dataclass
class RecordIndex:
    """Where the records of one split are: arrays of shard number, byte offset, byte length and estimated length
    ([n] each, in shard/line order), plus what training needs from the whole split without holding it: a
    fingerprint of the record ids (checkpoints compare it) and the clips whose transcript is missing (`text: null`)."""

    where: str
    shards: list[str]
    shard: np.ndarray  # int32 [n]
    offset: np.ndarray  # int64 [n]
    nbytes: np.ndarray  # int32 [n]
    lengths: np.ndarray  # int32 [n]
    fingerprint: str
    untranscribed: list[str]  # audio paths/URIs of entries with text null, sorted
    too_long: int = 0  # records dropped because their estimate exceeds max_len

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def build(cls, generated_dir: str | Path, split: str, max_len: int | None = None) -> RecordIndex:
        """Scan the finished shards once (each record parsed and checked, then forgotten)."""
        shards = finished_shards(generated_dir)
        if not shards:
            raise FileNotFoundError(f"{generated_dir}: no {SHARD_GLOB} files; run `desta generate` (or "
                                    f"`desta import-aqa PATH`) first")
        cols = {k: array(t) for k, t in (("shard", "i"), ("offset", "q"), ("nbytes", "i"), ("lengths", "i"))}
        ids, untranscribed, too_long = hashlib.sha256(), set(), 0
        for s, path in enumerate(shards):
            for offset, nbytes, rec in iter_jsonl_at(path):
                if rec.get("split") != split:
                    continue
                check_record(rec, str(path))
                est = length_estimate(rec)
                if max_len is not None and est > max_len:
                    too_long += 1
                    continue
                for col, value in zip(cols.values(), (s, offset, nbytes, est), strict=True):
                    col.append(value)
                ids.update(f"{rec.get('id')}\n".encode())
                untranscribed |= {str(a["audio"]) for m in rec["messages"] for a in (m.get("audios") or [])
                                  if a.get("text") is None and a.get("audio")}
        ids.update(f"{split}:{len(cols['lengths'])}".encode())
        return cls(str(generated_dir), [str(p) for p in shards], *(np.frombuffer(c, dtype=c.typecode)
                   for c in cols.values()), ids.hexdigest()[:16], sorted(untranscribed), too_long)

    def record(self, i: int) -> dict[str, Any]:
        return read_jsonl_at(self.shards[self.shard[i]], int(self.offset[i]), int(self.nbytes[i]))

    def nbytes_held(self) -> int:
        return sum(a.nbytes for a in (self.shard, self.offset, self.nbytes, self.lengths))


class GeneratedDataset(Dataset):
    """Item i -> {"id", "messages" (audio entries carry "array": float32 [t] at 16 kHz), "response", "length"};
    or {"id", "error": reason, "path"} when a clip cannot be decoded (dropped and counted by the collator).
    `transcripts` (audio path -> text) fills entries whose `text` is null (see features.transcribe_missing)."""

    def __init__(self, index: RecordIndex, transcripts: dict[str, str] | None = None):
        self.index, self.transcripts = index, transcripts or {}
        self.lengths = index.lengths

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.index.record(i)
        messages = rec["messages"]
        try:
            for m in messages:
                for a in m.get("audios") or []:
                    if a.get("text") is None and str(a["audio"]) in self.transcripts:
                        a["text"] = self.transcripts[str(a["audio"])]
                    a["array"] = load_audio(a["audio"])
        except AudioError as err:
            return {"id": rec.get("id"), "error": err.reason, "path": err.path}
        return {"id": rec.get("id"), "messages": messages, "response": rec["response"],
                "length": int(self.lengths[i])}


class BucketBatchSampler(Sampler[list[int]]):
    """Global batches of `batch_size x world_size` records: shuffle (seed, epoch), cut into pools of `pool` global
    batches, sort each pool by length, cut into global batches, shuffle their order. Rank r takes the r-th of
    `world_size` equal slices of every global batch, so what is trained on at a step depends on the product
    batch_size x world_size only, and the data position (global batches done) means the same on every rank and at
    every world size with that product. With `start` (a resume) the first `start` global batches of the epoch are
    skipped without loading anything. Without drop_last, a short last global batch is split as evenly as it goes
    (merged into the one before when it has fewer records than ranks, so no rank gets an empty slice)."""

    def __init__(self, lengths: Any, batch_size: int, seed: int, bucket: bool = True, pool: int = 50,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True, shuffle: bool = True):
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed, self.bucket, self.pool = batch_size, seed, bucket, pool
        self.rank, self.world, self.drop_last, self.shuffle = rank, world_size, drop_last, shuffle
        self.epoch, self.start = 0, 0
        self._cached: tuple[int, list[np.ndarray]] | None = None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def global_batches(self) -> list[np.ndarray]:
        """This epoch's global batches (index arrays), computed once per epoch."""
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        n, size = len(self.lengths), self.batch_size * self.world
        rng = np.random.default_rng([self.seed % 2**63, self.epoch])
        idx = (rng.permutation(n) if self.shuffle else np.arange(n)).astype(np.int64)
        if self.bucket:
            span = size * self.pool
            for lo in range(0, n, span):
                chunk = idx[lo:lo + span]
                idx[lo:lo + span] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
        batches = [idx[lo:lo + size] for lo in range(0, n, size)]
        if self.drop_last and batches and len(batches[-1]) < size:
            batches.pop()
        elif len(batches) > 1 and len(batches[-1]) < self.world:
            batches[-2:] = [np.concatenate(batches[-2:])]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cached = (self.epoch, batches)
        return batches

    def epoch_batches(self) -> list[list[int]]:
        """This rank's slices of this epoch's global batches (from batch 0, whatever `start` is)."""
        return [self.slice(b) for b in self.global_batches()]

    def slice(self, batch: np.ndarray) -> list[int]:
        return np.array_split(batch, self.world)[self.rank].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches()[self.start:]:
            yield self.slice(batch)

    def __len__(self) -> int:
        return max(0, len(self.global_batches()) - self.start)
