"""The manifest: the data contract every stage reads (one row per clip), stored as Parquet shards.

Written by `desta prepare`; read by generate, validate, train and evaluate. Schema below; readers stream shards.

Clip-level columns (all metadata optional, null when the source lacks it):
  id            stable id: "<source>/<relative path without extension>" (never changes between runs)
  audio         local path (relative to the project root, or absolute) or s3:// URI of the original file
  duration      seconds (float); sample_rate (int, of the file); channels (int)
  source        corpus name from params (e.g. "demo", "vctk"); domain: speech | sound | music
  split         train | valid | test (stable hash of the group key, or the corpus' official split)
  license       license string of the corpus
  content_hash  sha256 of the file bytes (duplicate detection)
  transcript, language, gender, age, emotion, accent, pitch, speaking_speed, volume, speaker  (str)
  sound_labels  list[str]; caption (str)
  music_genre, music_instrument, music_key, music_mode (str); music_tempo_bpm (float); music_chords (list[str])
  snr_db (float, mixtures); reverb (bool); background (str: the background sound label of a mixture)
  attributes    JSON object (ordered) of corpus-specific extras rendered as "Label: value" (e.g. {"Sentiment": ...})
  segments      list of {start, end, text, speaker, gender, emotion} for multi-segment sources (timestamps in s)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DOMAINS = ("speech", "sound", "music")
SPLITS = ("train", "valid", "test")

SEGMENT_TYPE = pa.struct([
    ("start", pa.float64()), ("end", pa.float64()), ("text", pa.string()), ("speaker", pa.string()),
    ("gender", pa.string()), ("emotion", pa.string()),
])

SCHEMA = pa.schema([
    ("id", pa.string()), ("audio", pa.string()), ("duration", pa.float64()), ("sample_rate", pa.int32()),
    ("channels", pa.int32()), ("source", pa.string()), ("domain", pa.string()), ("split", pa.string()),
    ("license", pa.string()), ("content_hash", pa.string()),
    ("transcript", pa.string()), ("language", pa.string()), ("gender", pa.string()), ("age", pa.string()),
    ("emotion", pa.string()), ("accent", pa.string()), ("pitch", pa.string()), ("speaking_speed", pa.string()),
    ("volume", pa.string()), ("speaker", pa.string()),
    ("sound_labels", pa.list_(pa.string())), ("caption", pa.string()),
    ("music_genre", pa.string()), ("music_instrument", pa.string()), ("music_key", pa.string()),
    ("music_mode", pa.string()), ("music_tempo_bpm", pa.float64()), ("music_chords", pa.list_(pa.string())),
    ("snr_db", pa.float64()), ("reverb", pa.bool_()), ("background", pa.string()),
    ("attributes", pa.string()), ("segments", pa.list_(SEGMENT_TYPE)),
])


@dataclass
class Clip:
    """One manifest row. `attributes` is a dict here and JSON text on disk."""

    id: str
    audio: str
    duration: float
    sample_rate: int
    channels: int
    source: str
    domain: str
    split: str = "train"
    license: str | None = None
    content_hash: str | None = None
    transcript: str | None = None
    language: str | None = None
    gender: str | None = None
    age: str | None = None
    emotion: str | None = None
    accent: str | None = None
    pitch: str | None = None
    speaking_speed: str | None = None
    volume: str | None = None
    speaker: str | None = None
    sound_labels: list[str] | None = None
    caption: str | None = None
    music_genre: str | None = None
    music_instrument: str | None = None
    music_key: str | None = None
    music_mode: str | None = None
    music_tempo_bpm: float | None = None
    music_chords: list[str] | None = None
    snr_db: float | None = None
    reverb: bool | None = None
    background: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    segments: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        check_fields({f.name: getattr(self, f.name) for f in fields(self)}, f"clip {self.id}: ")
        if self.domain not in DOMAINS:
            raise ValueError(f"clip {self.id}: domain must be one of {DOMAINS}, got {self.domain!r}")
        if self.split not in SPLITS:
            raise ValueError(f"clip {self.id}: split must be one of {SPLITS}, got {self.split!r}")

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        row["attributes"] = json.dumps(self.attributes or {}, ensure_ascii=False)
        if self.segments is not None:
            keys = [f.name for f in SEGMENT_TYPE]
            row["segments"] = [{k: s.get(k) for k in keys} for s in self.segments]
        return row

    @property
    def sound_class(self) -> str | None:
        """The one sound a listener would name: the background mixed under speech, else a sound clip's first label."""
        if self.background:
            return self.background
        return self.sound_labels[0] if self.domain == "sound" and self.sound_labels else None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Clip:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in row.items() if k in names}
        attrs = kw.get("attributes")
        kw["attributes"] = json.loads(attrs) if isinstance(attrs, str) and attrs else (attrs or {})
        return cls(**kw)


def _problem(value: Any, t: pa.DataType) -> str | None:
    """What is wrong with `value` for a column of type `t` (None: it fits; null always fits)."""
    if value is None:
        return None
    if pa.types.is_string(t):
        return None if isinstance(value, str) else "a string"
    if pa.types.is_boolean(t):
        return None if isinstance(value, bool) else "true or false"
    if pa.types.is_integer(t):
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if pa.types.is_floating(t):
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else "a finite number"
    if pa.types.is_list(t):
        items = t.value_type
        plural = ("strings" if pa.types.is_string(items) else
                  f"objects with keys among {[f.name for f in items]}" if pa.types.is_struct(items) else "numbers")
        if not isinstance(value, list):
            return f"a list of {plural}"
        bad = next((p for p in (_problem(v, items) for v in value) if p), None)
        return f"a list of {plural}" if bad else "a list without nulls" if None in value else None
    if pa.types.is_struct(t):
        if not isinstance(value, dict) or set(value) - {f.name for f in t}:
            return f"an object with keys among {[f.name for f in t]}"
        return next((f"an object whose `{f.name}` is {p}" for f in t if (p := _problem(value.get(f.name), f.type))),
                    None)
    return None


COLUMN_TYPES = {f.name: f.type for f in SCHEMA}


def check_fields(values: dict[str, Any], prefix: str = "") -> None:
    """ValueError naming the first field whose value does not fit the manifest schema (a metadata row with
    `"gender": 5`, `"music_tempo_bpm": "fast"` or `"sound_labels": "rain"`); `attributes` must be an object."""
    for name, value in values.items():
        if name == "attributes":
            want = None if value is None or isinstance(value, dict) else "a JSON object"
        else:
            want = _problem(value, COLUMN_TYPES[name]) if name in COLUMN_TYPES else None
        if want:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise ValueError(f"{prefix}field `{name}` must be {want}, got {type(value).__name__} {shown}")


def write_shard(clips: Iterable[Clip], path: str | Path) -> int:
    """Write one Parquet shard atomically (tmp file then rename; no tmp is left on failure). Returns the row
    count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [c.to_row() for c in clips]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return len(rows)


def shard_paths(manifest_dir: str | Path) -> list[Path]:
    return sorted(Path(manifest_dir).glob("manifest-*.parquet"))


def iter_clips(manifest_dir: str | Path, splits: Iterable[str] | None = None) -> Iterator[Clip]:
    """Stream clips shard by shard (memory flat in the number of clips)."""
    wanted = set(splits) if splits else None
    paths = shard_paths(manifest_dir)
    if not paths:
        raise FileNotFoundError(f"{manifest_dir}: no manifest-*.parquet shards; run `desta prepare` first")
    for p in paths:
        pf = pq.ParquetFile(p)
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                if wanted is None or row["split"] in wanted:
                    yield Clip.from_row(row)


def read_table(manifest_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    """The whole manifest as one Arrow table (for validation and summaries; columns to keep it small)."""
    paths = shard_paths(manifest_dir)
    if not paths:
        raise FileNotFoundError(f"{manifest_dir}: no manifest-*.parquet shards; run `desta prepare` first")
    return pa.concat_tables([pq.read_table(p, columns=columns) for p in paths])
