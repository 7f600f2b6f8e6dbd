"""Recipe `librispeech` (also LibriTTS-style trees): read-speech transcripts + speaker sex. Run by `desta prepare`.

Layout (https://www.openslr.org/12, tarballs extracted into one root):
    <root>/SPEAKERS.TXT                     "ID |SEX| SUBSET |MINUTES| NAME" (';' comments)
    <root>/<part>/<spk>/<chapter>/<spk>-<chapter>.trans.txt   "<utt-id> TRANSCRIPT" per line
    <root>/<part>/<spk>/<chapter>/<utt-id>.flac
Parts dev-* -> valid, test-* -> test, train-* -> train (official splits). lhotse's `prepare_librispeech` reads the
same tree but drops the speaker's sex and probes every file (a corrupt file stops it); here SPEAKERS.TXT adds the
gender and bad files are quarantined instead.
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
    require(tree, "SPEAKERS.TXT", "SPEAKERS.TXT and part folders such as train-clean-100/ (LibriSpeech root)")


def speakers(tree: Any) -> dict[str, str]:
    out = {}
    for lineno, line in enumerate(tree.read_text("SPEAKERS.TXT").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith(";"):
            continue
        cols = [c.strip() for c in line.split("|")]
        if len(cols) < 5 or cols[1] not in GENDERS:
            raise RecipeError(f"{tree.uri('SPEAKERS.TXT')}:{lineno}: expected 'ID | SEX | SUBSET | MINUTES | NAME' "
                              f"with SEX F or M, got {line!r}")
        out[cols[0]] = GENDERS[cols[1]]
    return out


def _split(part: str) -> str:
    return "valid" if part.startswith("dev") else "test" if part.startswith("test") else "train"


def entries(source: SourceConfig, tree: Any, raw_dir: Path) -> Iterator[Entry]:
    genders = speakers(tree)
    for trans in tree.walk("", (".txt",)):
        if not trans.endswith(".trans.txt"):
            continue
        folder, part = trans.rsplit("/", 1)[0], trans.split("/", 1)[0]
        for lineno, line in enumerate(tree.read_text(trans).splitlines(), 1):
            where = f"{tree.uri(trans)}:{lineno}"
            utt, _, text = line.strip().partition(" ")
            if not utt or not text or utt.count("-") != 2:
                yield bad(where, f"{where}: expected '<spk>-<chapter>-<utt> TRANSCRIPT', got {line!r}")
                continue
            spk = utt.split("-")[0]
            yield Entry(rel=f"{folder}/{utt}.flac", group=spk, where=where,
                        meta={"domain": "speech", "split": _split(part), "transcript": text, "language": "English",
                              "speaker": spk, "gender": genders.get(spk)})
