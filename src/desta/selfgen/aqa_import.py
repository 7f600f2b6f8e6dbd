"""Import the released DeSTA-AQA5M jsonl files as the generated set, so the trainer can use the published targets.

    desta import-aqa PATH [--data-root DIR]      (or `generate.import_aqa: PATH` in params.yaml for the DVC stage)
Each released row has id (the clip's audio path relative to its corpus), dataset, seed_description, prompt, response,
messages. Rows become our records (records.py) with clip_id "<dataset>/<id without extension>", a stable hash split
(prepare.valid_fraction of clips to valid, the rest train), the domain guessed from the corpus name, and provenance
naming the source file and its sha256. Idempotent: the same inputs give the same shards and a re-run is skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from desta.config import Params
from desta.records import REQUIRED_FIELDS, STATE_FILE, iter_jsonl, shard_path, write_state

log = logging.getLogger(__name__)

IMPORT_SHARD_SIZE = 20000  # released set: ~5M rows -> ~250 shards
RELEASED_GENERATOR = "DeSTA-ntu/DeSTA-AQA5M-FROM-Llama3.1-8B-Instruct"
SOUND_CORPORA = ("audiocaps", "clotho", "esc", "fsd", "vggsound", "audioset", "urbansound", "wavcaps", "macs",
                 "vocalsound", "nonspeech")
MUSIC_CORPORA = ("music", "gtzan", "nsynth", "mtg", "fma", "medley", "opencpop", "jamendo", "magna")


def guess_domain(dataset: str) -> str:
    """speech | sound | music from the corpus name (the released rows carry no domain field)."""
    name = dataset.lower().replace("-", "").replace("_", "")
    if any(k in name for k in MUSIC_CORPORA):
        return "music"
    if any(k in name for k in SOUND_CORPORA):
        return "sound"
    return "speech"


def stable_split(clip_id: str, valid_fraction: float, salt: str) -> str:
    """train | valid from a hash of the clip id (every prompt of a clip lands in the same split)."""
    bucket = int(hashlib.sha256(f"{salt}:{clip_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "valid" if bucket < valid_fraction else "train"


def source_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        if files:
            return files
    raise FileNotFoundError(f"{path}: no .jsonl file here; pass a released DeSTA-AQA5M .jsonl file or a directory "
                            f"holding them")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def convert_row(row: dict[str, Any], where: str, k: int, audio: str, split: str,
                prov: dict[str, Any]) -> dict[str, Any]:
    """One released row -> our record (keeps its messages, points their audio at the local file)."""
    missing = [f for f in REQUIRED_FIELDS if f not in row or row[f] is None]
    if missing:
        raise ValueError(f"{where}: released row lacks field(s) {missing}; is this a DeSTA-AQA5M jsonl file?")
    clip_id = f"{row['dataset']}/{Path(str(row['id'])).with_suffix('').as_posix()}"
    messages = json.loads(json.dumps(row["messages"]))
    for msg in messages:
        for a in msg.get("audios") or []:
            a["audio"] = audio
    prompt_hash = hashlib.sha1(str(row["prompt"]).encode()).hexdigest()[:10]
    return {"id": f"{clip_id}#{k}", "dataset": row["dataset"], "seed_description": row["seed_description"],
            "prompt": row["prompt"], "response": row["response"], "messages": messages, "clip_id": clip_id,
            "audio": audio, "split": split, "domain": guess_domain(str(row["dataset"])),
            "prompt_id": f"aqa-{prompt_hash}", "prompt_category": "imported", **prov}


def _records(files: list[Path], data_root: Path | None, params: Params) -> Iterator[dict[str, Any]]:
    seen: dict[str, int] = {}
    for path in files:
        prov = {"generator": RELEASED_GENERATOR, "generator_hash": file_sha256(path),
                "gen_params": {"imported_from": path.name}, "seed": 0, "target_source": "llm"}
        for n, row in enumerate(iter_jsonl(path), 1):
            rel = str(row.get("id", ""))
            audio = str(data_root / rel) if data_root else rel
            clip_key = f"{row.get('dataset')}/{rel}"
            k = seen.get(clip_key, 0)
            seen[clip_key] = k + 1
            split = stable_split(clip_key, params.prepare.valid_fraction, params.prepare.split_seed)
            yield convert_row(row, f"{path}:{n}", k, audio, split, prov)


def _write(out: Path, index: int, rows: list[str]) -> None:
    final = shard_path(out, index)
    tmp = final.with_name(final.name + ".tmp")
    tmp.write_text("".join(rows), encoding="utf-8")
    tmp.replace(final)


def import_aqa(params: Params, path: Path, data_root: Path | None = None) -> dict[str, Any]:
    """Convert released jsonl file(s) at `path` into `<paths.generated>/shard-*.jsonl`. Returns a summary."""
    files = source_files(Path(path))
    out = Path(params.paths.generated)
    fp = hashlib.sha256(json.dumps([[str(f), file_sha256(f)] for f in files] + [str(data_root)]).encode()).hexdigest()
    state_path = out / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state.get("fingerprint") == fp and state.get("summary", {}).get("complete"):
        log.info("import-aqa: %s already imported into %s; nothing to do", path, out)
        return state["summary"]
    out.mkdir(parents=True, exist_ok=True)
    for stale in sorted(out.glob("shard-*.jsonl*")):
        stale.unlink()
    counts: dict[str, int] = {}
    buf: list[str] = []
    n_shards = 0
    for rec in _records(files, data_root, params):
        counts[rec["split"]] = counts.get(rec["split"], 0) + 1
        buf.append(json.dumps(rec, ensure_ascii=False) + "\n")
        if len(buf) == IMPORT_SHARD_SIZE:
            _write(out, n_shards, buf)
            n_shards, buf = n_shards + 1, []
    if buf:
        _write(out, n_shards, buf)
        n_shards += 1
    summary = {"records": sum(counts.values()), "splits": counts, "shards": n_shards,
               "sources": [str(f) for f in files], "out": str(out), "generator": RELEASED_GENERATOR, "complete": True}
    write_state(out, {"fingerprint": fp, "n_shards": n_shards, "summary": summary, "imported": True})
    return summary
