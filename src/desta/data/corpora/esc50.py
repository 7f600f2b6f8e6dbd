"""Recipe `esc50`: 2,000 five-second environmental recordings in 50 labelled classes. Run by `desta prepare`.

Layout (https://github.com/karolpiczak/ESC-50, master.zip extracted):
    <root>/meta/esc50.csv    filename,fold,target,category,esc10,src_file,take
    <root>/audio/1-100032-A-0.wav
Folds 1-5 are the corpus' cross-validation folds: fold 5 -> test, fold 4 -> valid, folds 1-3 -> train.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from desta.config import SourceConfig
from desta.data.corpora import Entry, bad, csv_rows, require

LICENSE = "CC-BY-NC-3.0"
FOLD_SPLIT = {"5": "test", "4": "valid"}


def check(source: SourceConfig, tree: Any) -> None:
    require(tree, "meta/esc50.csv", "meta/esc50.csv and audio/ (ESC-50 root)")


def entries(source: SourceConfig, tree: Any, raw_dir: Path) -> Iterator[Entry]:
    for where, row in csv_rows(tree, "meta/esc50.csv", ("filename", "fold", "category")):
        if "__bad__" in row:
            yield bad(where, row["__bad__"])
            continue
        label = row["category"].replace("_", " ")
        yield Entry(rel=f"audio/{row['filename']}", where=where, meta={
            "domain": "sound", "split": FOLD_SPLIT.get(row["fold"], "train"), "sound_labels": [label],
            "caption": f"The sound of {label}.", "attributes": {"Fold": row["fold"]}})
