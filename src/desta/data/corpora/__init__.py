"""Corpus recipes: one module per source corpus, each turning a corpus' real on-disk layout + metadata files into
`Entry` rows that `desta prepare` (desta/data/prepare.py) decodes, checks and writes to the manifest.

A recipe is `entries(source: SourceConfig, tree: Tree, raw_dir: Path) -> Iterator[Entry]` and must raise
`RecipeError` naming the file (and line) when the layout or a metadata row is wrong. `check(source, tree)` runs
before any work: it verifies the files the recipe needs exist and says what was expected otherwise.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

RECIPES: dict[str, str] = {
    "demo": "desta.data.corpora.demo",
    "manifest": "desta.data.corpora.jsonl",
    "librispeech": "desta.data.corpora.librispeech",
    "vctk": "desta.data.corpora.vctk",
    "crema_d": "desta.data.corpora.crema_d",
    "esc50": "desta.data.corpora.esc50",
    "clotho": "desta.data.corpora.clotho",
    "musiccaps": "desta.data.corpora.musiccaps",
}


class RecipeError(ValueError):
    """A corpus layout or metadata row is wrong; the message names the file, the line and the fix."""


@dataclass
class Entry:
    """One clip found by a recipe, before decoding.

    rel: path of the audio relative to the source root (also the stable id: "<source>/<rel without extension>").
    meta: manifest fields known from the metadata (domain required; split only when the corpus has official
    splits; attributes for extras). group: split key (speaker, recording) so related clips share a split.
    """

    rel: str
    meta: dict[str, Any]
    group: str | None = None
    where: str = ""  # "metadata.csv:12": where the row came from, for error and quarantine messages
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    check: Callable[..., None]
    entries: Callable[..., Iterator[Entry]]
    license: str


def recipe_for(kind: str) -> Recipe:
    if kind not in RECIPES:
        raise RecipeError(f"unknown source kind {kind!r}; known kinds: {', '.join(sorted(RECIPES))}")
    module = importlib.import_module(RECIPES[kind])
    return Recipe(module.check, module.entries, module.LICENSE)


def require(tree: Any, rel: str, what: str) -> None:
    """Fail before any work when a file or folder the recipe needs is absent."""
    if not tree.exists(rel):
        raise RecipeError(f"{tree.uri(rel)}: not found; expected {what}. Check `path:` of this source in "
                          "params.yaml (see docs/data.md for each corpus' layout)")


def csv_rows(tree: Any, rel: str, required: tuple[str, ...], delimiter: str = ",") -> Iterator[tuple[str, dict]]:
    """(where "file:line", row) for a metadata CSV; a missing column fails the source, a short row is returned with
    the key "__bad__" so the recipe can quarantine it with its file and line."""
    import csv
    import io

    reader = csv.DictReader(io.StringIO(tree.read_text(rel)), delimiter=delimiter)
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise RecipeError(f"{tree.uri(rel)}:1: header lacks column(s) {missing}; expected at least {list(required)}")
    for row in reader:
        where = f"{tree.uri(rel)}:{reader.line_num}"
        if None in row or any(row.get(c) in (None, "") for c in required):
            row = {"__bad__": f"{where}: malformed row (expected columns {list(required)}, got {len(row)} field(s) "
                              "or empty values); fix the row or delete it"}
        yield where, row


def bad(where: str, message: str) -> Entry:
    """An Entry that prepare quarantines as bad_metadata (names the file and line)."""
    return Entry(rel=f"<{where}>", meta={}, where=where, extra={"bad": message})
