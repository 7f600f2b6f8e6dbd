"""Recipe `musiccaps`: 5,521 ten-second music clips with expert captions and aspect lists. Run by `desta prepare`.

Layout: Google releases only the metadata (https://www.kaggle.com/datasets/googleai/musiccaps); users fetch each
clip themselves (e.g. `yt-dlp` of `ytid` cut to [start_s, end_s]) into the audio folder:
    <root>/musiccaps-public.csv   ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,
                                  is_balanced_subset,is_audioset_eval
    <root>/audio/<ytid>.wav       (options.audio_dir, default "audio"; options.ext, default ".wav")
Clips that could not be downloaded are quarantined as "missing". is_audioset_eval True -> test, else train/valid by
stable hash.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from desta.config import SourceConfig
from desta.data.corpora import Entry, bad, csv_rows, require

LICENSE = "CC-BY-SA-4.0 (captions); audio: YouTube, per-video terms"


def check(source: SourceConfig, tree: Any) -> None:
    require(tree, "musiccaps-public.csv", "musiccaps-public.csv and audio/<ytid>.wav (MusicCaps root)")


def _aspects(text: str, where: str) -> list[str]:
    value = ast.literal_eval(text)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: aspect_list must be a list of strings like ['piano', 'slow tempo']")
    return value


def entries(source: SourceConfig, tree: Any, raw_dir: Path) -> Iterator[Entry]:
    audio_dir, ext = source.options.get("audio_dir", "audio"), source.options.get("ext", ".wav")
    for where, row in csv_rows(tree, "musiccaps-public.csv", ("ytid", "start_s", "end_s", "aspect_list", "caption")):
        if "__bad__" in row:
            yield bad(where, row["__bad__"])
            continue
        try:
            aspects = _aspects(row["aspect_list"], where)
        except (ValueError, SyntaxError) as err:
            yield bad(where, f"{where}: cannot parse aspect_list ({err})")
            continue
        meta = {"domain": "music", "caption": row["caption"].strip(),
                "attributes": {"Aspects": ", ".join(aspects), "Segment": f"{row['start_s']}-{row['end_s']} s"}}
        if row.get("is_audioset_eval", "").strip().lower() == "true":
            meta["split"] = "test"
        yield Entry(rel=f"{audio_dir}/{row['ytid']}{ext}", where=where, meta=meta)
