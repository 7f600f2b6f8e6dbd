"""Recipe `manifest`: a corpus already described by a metadata.jsonl (the demo corpus' layout; also the way to
bring any custom corpus). Each line: {"file": "<audio path relative to the root>", "domain": ..., optional
"split", and any manifest metadata field (transcript, gender, sound_labels, ...)}. Run by `desta prepare`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

from desta.config import SourceConfig
from desta.data.corpora import Entry, require
from desta.data.manifest import Clip, check_fields

LICENSE = "unknown"
METADATA = "metadata.jsonl"
FILLED_BY_PREPARE = {"id", "audio", "duration", "sample_rate", "channels", "source", "content_hash"}
ALLOWED = {f.name for f in fields(Clip)} - FILLED_BY_PREPARE


def check(source: SourceConfig, tree: Any) -> None:
    require(tree, METADATA, f"{METADATA} (one JSON object per clip with a \"file\" key) at the corpus root")


def parse_line(line: str, where: str) -> Entry:
    """One metadata line -> Entry; a malformed line becomes an Entry marked bad (quarantined, names file:line)."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return Entry(rel=f"<{where}>", meta={}, where=where, extra={"bad": f"{where}: malformed JSON ({err.msg})"})
    if not isinstance(row, dict) or not isinstance(row.get("file"), str):
        return Entry(rel=f"<{where}>", meta={}, where=where,
                     extra={"bad": f"{where}: expected a JSON object with a string \"file\" key"})
    unknown = sorted(set(row) - ALLOWED - {"file"})
    if unknown:
        return Entry(rel=row["file"], meta={}, where=where, extra={"bad": f"{where}: unknown field(s) {unknown}; "
                                                                          f"allowed: {sorted(ALLOWED)}"})
    meta = {k: v for k, v in row.items() if k != "file" and v is not None}
    try:
        check_fields(meta)  # one mistyped row is quarantined; the rest of the corpus is kept
    except ValueError as err:
        return Entry(rel=row["file"], meta={}, where=where, extra={"bad": f"{where}: {err}"})
    return Entry(rel=row["file"], meta=meta, group=meta.get("speaker"), where=where)


def entries(source: SourceConfig, tree: Any, raw_dir: Path) -> Iterator[Entry]:
    for lineno, line in enumerate(tree.read_text(METADATA).splitlines(), 1):
        if line.strip():
            yield parse_line(line, f"{tree.uri(METADATA)}:{lineno}")
