"""Recipe `vctk`: 110 English speakers with accents (VCTK 0.92, also 0.80). Run by `desta prepare`.

Layout (https://datashare.ed.ac.uk/handle/10283/3443, zip extracted):
    <root>/speaker-info.txt           "ID  AGE  GENDER  ACCENTS  REGION  COMMENTS" (space-aligned)
    <root>/txt/p225/p225_001.txt      one sentence
    <root>/wav48_silence_trimmed/p225/p225_001_mic1.flac   (0.92; options.mic: mic1 | mic2)
    <root>/wav48/p225/p225_001.wav                         (0.80)
No official split: clips are split by speaker (stable hash). Adds age, gender, accent and region, which lhotse's
`prepare_vctk` keeps only partly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from desta.config import SourceConfig
from desta.data.corpora import Entry, RecipeError, bad, require

LICENSE = "CC-BY-4.0"
GENDERS = {"F": "Female", "M": "Male"}


def check(source: SourceConfig, tree: Any) -> None:
    require(tree, "speaker-info.txt", "speaker-info.txt, txt/ and wav48_silence_trimmed/ (VCTK root)")
    require(tree, "txt", "txt/<speaker>/<utt>.txt transcripts")
    if source.options.get("mic", "mic1") not in ("mic1", "mic2"):
        raise RecipeError(f"options.mic must be mic1 or mic2, got {source.options['mic']!r}")


def speakers(tree: Any) -> dict[str, dict[str, str]]:
    out = {}
    lines = tree.read_text("speaker-info.txt").splitlines()
    for lineno, line in enumerate(lines[1:], 2):
        cols = line.split()
        if not cols:
            continue
        if len(cols) < 4 or cols[2] not in GENDERS:
            raise RecipeError(f"{tree.uri('speaker-info.txt')}:{lineno}: expected 'ID AGE GENDER ACCENTS [REGION]' "
                              f"with GENDER F or M, got {line!r}")
        spk = cols[0] if cols[0].startswith("p") or cols[0].startswith("s") else f"p{cols[0]}"
        out[spk] = {"age": cols[1], "gender": GENDERS[cols[2]], "accent": cols[3], "region": " ".join(cols[4:])}
    return out


def entries(source: SourceConfig, tree: Any, raw_dir: Path) -> Iterator[Entry]:
    info = speakers(tree)
    new_layout = tree.exists("wav48_silence_trimmed")
    mic = source.options.get("mic", "mic1")
    for txt in tree.walk("txt", (".txt",)):
        spk, utt = txt.split("/")[-2], Path(txt).stem
        where = tree.uri(txt)
        if spk not in info:
            yield bad(where, f"{where}: speaker {spk} is not in speaker-info.txt")
            continue
        text = tree.read_text(txt).strip()
        rel = f"wav48_silence_trimmed/{spk}/{utt}_{mic}.flac" if new_layout else f"wav48/{spk}/{utt}.wav"
        s = info[spk]
        attributes = {"Region": s["region"]} if s["region"] else {}
        yield Entry(rel=rel, group=spk, where=where,
                    meta={"domain": "speech", "transcript": text, "language": "English", "speaker": spk,
                          "gender": s["gender"], "age": s["age"], "accent": s["accent"], "attributes": attributes})
