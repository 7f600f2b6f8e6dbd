"""Recipe `demo`: the offline demo corpus (desta/data/demo.py builds it under paths.raw/<name>; `desta prepare`
builds it first, then reads its metadata.jsonl through the `manifest` recipe). Splits come from the builder, which
keeps held-out sentences and voices out of train.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from desta.config import SourceConfig
from desta.data.corpora import Entry, jsonl

LICENSE = "CC0-1.0 (generated locally with eSpeak NG and numpy)"


def check(source: SourceConfig, tree: Any) -> None:
    """Nothing to check: the corpus is generated (the eSpeak NG data ships with the espeakng-loader wheel)."""


def entries(source: SourceConfig, tree: Any, raw_dir: Path) -> Iterator[Entry]:
    yield from jsonl.entries(source, tree, raw_dir)
