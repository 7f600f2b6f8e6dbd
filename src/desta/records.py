"""The generated-set record (DeSTA-AQA5M fields + provenance) and its shard files: the contract between `desta
generate` / `desta import-aqa` (writers) and validate, train and evaluate (readers, via `read_records`).
One JSON object per line in `<paths.generated>/shard-00000.jsonl`, ...:
  id "<clip_id>#<k>", dataset, seed_description, prompt, response, messages (system + user with `audios`),
  clip_id, audio, split, domain, prompt_id, prompt_category, generator, generator_hash, gen_params, seed.
Only finished shards (`shard-*.jsonl`) are read; in-flight ones are `shard-*.jsonl.partial`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from desta.conversation import training_messages
from desta.data.manifest import Clip

SHARD_GLOB = "shard-*.jsonl"
REJECTED_GLOB = "rejected-*.jsonl"  # records with an empty response (after strip_echo), kept beside their shard
PARTIAL_SUFFIX = ".partial"
REQUIRED_FIELDS = ("id", "dataset", "seed_description", "prompt", "response", "messages")
STATE_FILE = "generate.json"  # fingerprint of the run + records per finished shard + summary


def shard_path(generated_dir: str | Path, index: int) -> Path:
    return Path(generated_dir) / f"shard-{index:05d}.jsonl"


def rejected_path(generated_dir: str | Path, index: int) -> Path:
    return Path(generated_dir) / f"rejected-{index:05d}.jsonl"


def count_rejected(generated_dir: str | Path) -> int:
    """Records set aside as not training targets (one JSON line each) across all rejected-*.jsonl files."""
    return sum(p.read_text(encoding="utf-8").count("\n") for p in Path(generated_dir).glob(REJECTED_GLOB))


def record_id(clip_id: str, k: int) -> str:
    return f"{clip_id}#{k}"


def transcript_of(clip: Clip) -> str | None:
    """The text fed after the audio queries at training time: the transcript, else the joined segment texts."""
    if clip.transcript and clip.transcript.strip():
        return clip.transcript.strip()
    texts = [str(s.get("text")).strip() for s in clip.segments or [] if (s.get("text") or "").strip()]
    return " ".join(texts) or None


def build_record(clip: Clip, k: int, seed_description: str, prompt: Any, response: str,
                 provenance: dict[str, Any]) -> dict[str, Any]:
    """One record. `prompt` has `.text`, `.id`, `.category` (a desta.selfgen.prompts.Prompt); provenance has
    generator, generator_hash, gen_params and seed (the same dict for every record of a run)."""
    return {
        "id": record_id(clip.id, k),
        "dataset": clip.source,
        "seed_description": seed_description,
        "prompt": prompt.text,
        "response": response,
        "messages": training_messages(prompt.text, clip.audio, transcript_of(clip)),
        "clip_id": clip.id,
        "audio": clip.audio,
        "split": clip.split,
        "domain": clip.domain,
        "prompt_id": prompt.id,
        "prompt_category": prompt.category,
        **provenance,
    }


def write_state(generated_dir: str | Path, state: dict[str, Any]) -> None:
    """Atomically replace `<generated>/generate.json` (tmp + rename; a kill never leaves it half-written)."""
    tmp = Path(generated_dir) / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(Path(generated_dir) / STATE_FILE)


def finished_shards(generated_dir: str | Path) -> list[Path]:
    return sorted(Path(generated_dir).glob(SHARD_GLOB))


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one file; a malformed line raises with the file and line number."""
    for _, _, rec in iter_jsonl_at(path):
        yield rec


def iter_jsonl_at(path: Path) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """(byte offset, byte length, record) of every record line of one file, for readers that keep only where a
    record is (`read_jsonl_at` reads it back); a malformed line raises with the file and line number."""
    offset = 0
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            start, offset = offset, offset + len(line)
            if not line.strip():
                continue
            try:
                yield start, len(line), json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                msg = err.msg if isinstance(err, json.JSONDecodeError) else "not UTF-8"
                raise ValueError(f"{path}:{lineno}: not valid JSON ({msg}); delete the shard and re-run "
                                 f"`desta generate` to rebuild it") from None


def read_jsonl_at(path: str | Path, offset: int, length: int) -> dict[str, Any]:
    """The record whose line starts at byte `offset` of `path` (as found by iter_jsonl_at)."""
    with open(path, "rb") as fh:
        fh.seek(offset)
        raw = fh.read(length)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError(f"{path}: no record at byte {offset}; the shard changed after training started. Restart "
                         "`desta train` (the generated set must not change during a run)") from None


def read_records(generated_dir: str | Path, splits: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Stream the generated set (finished shards in order), optionally only the given splits."""
    shards = finished_shards(generated_dir)
    if not shards:
        raise FileNotFoundError(f"{generated_dir}: no {SHARD_GLOB} files; run `desta generate` (or "
                                f"`desta import-aqa PATH`) first")
    wanted = set(splits) if splits else None
    for path in shards:
        for rec in iter_jsonl(path):
            if wanted is None or rec.get("split") in wanted:
                yield rec
