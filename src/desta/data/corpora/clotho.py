"""Recipe `clotho`: 15-30 s sound clips with five free-text captions each (Clotho v2.1). Run by `desta prepare`.

Layout (https://zenodo.org/records/4783391, archives extracted):
    <root>/clotho_captions_development.csv   file_name,caption_1,...,caption_5  (also _validation, _evaluation)
    <root>/development/<file_name>           (also validation/, evaluation/)
Official splits: development -> train, validation -> valid, evaluation -> test. The first caption is the clip's
caption; the other four are kept in attributes ("Other captions").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from desta.config import SourceConfig
from desta.data.corpora import Entry, RecipeError, bad, csv_rows

LICENSE = "Tampere University license (non-commercial research); audio from Freesound (CC licenses)"
SPLITS = {"development": "train", "validation": "valid", "evaluation": "test"}


def check(source: SourceConfig, tree: Any) -> None:
    if not any(tree.exists(f"clotho_captions_{part}.csv") for part in SPLITS):
        raise RecipeError(f"{tree.uri('')}: no clotho_captions_<development|validation|evaluation>.csv; expected "
                          "the Clotho root with those CSVs and the matching audio folders")


def entries(source: SourceConfig, tree: Any, raw_dir: Path) -> Iterator[Entry]:
    for part, split in SPLITS.items():
        csv_name = f"clotho_captions_{part}.csv"
        if not tree.exists(csv_name):
            continue
        for where, row in csv_rows(tree, csv_name, ("file_name", "caption_1")):
            if "__bad__" in row:
                yield bad(where, row["__bad__"])
                continue
            others = [row[c] for c in ("caption_2", "caption_3", "caption_4", "caption_5") if row.get(c)]
            yield Entry(rel=f"{part}/{row['file_name']}", where=where, meta={
                "domain": "sound", "split": split, "caption": row["caption_1"],
                "attributes": {"Other captions": " | ".join(others)} if others else {}})
