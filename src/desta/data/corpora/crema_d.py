"""Recipe `crema_d`: acted emotional speech, 91 actors, 12 sentences x 6 emotions x 4 levels. Run by `desta prepare`.

Layout (https://github.com/CheyneyComputerScience/CREMA-D, git-lfs clone):
    <root>/AudioWAV/1001_DFA_ANG_XX.wav     <actor>_<sentence>_<emotion>_<level>.wav
    <root>/VideoDemographics.csv            ActorID,Age,Sex,Race,Ethnicity
Emotion, level, transcript (from the sentence code), gender, age, race and ethnicity become metadata (the paper's
seed description for CREMA-D). No official split: clips are split by actor.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from desta.config import SourceConfig
from desta.data.corpora import Entry, bad, csv_rows, require

LICENSE = "ODbL-1.0"
SENTENCES = {"IEO": "It's eleven o'clock.", "TIE": "That is exactly what happened.",
             "IOM": "I'm on my way to the meeting.", "IWW": "I wonder what this is about.",
             "TAI": "The airplane is almost full.", "MTI": "Maybe tomorrow it will be cold.",
             "IWL": "I would like a new alarm clock.", "ITH": "I think I have a doctor's appointment.",
             "DFA": "Don't forget a jacket.", "ITS": "I think I've seen this before.",
             "TSI": "The surface is slick.", "WSI": "We'll stop in a couple of minutes."}
EMOTIONS = {"ANG": "Anger", "DIS": "Disgust", "FEA": "Fear", "HAP": "Happy", "NEU": "Neutral", "SAD": "Sad"}
LEVELS = {"LO": "Low", "MD": "Medium", "HI": "High", "XX": "Unspecified"}


def check(source: SourceConfig, tree: Any) -> None:
    require(tree, "VideoDemographics.csv", "VideoDemographics.csv and AudioWAV/ (CREMA-D root)")
    require(tree, "AudioWAV", "AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav")


def entries(source: SourceConfig, tree: Any, raw_dir: Path) -> Iterator[Entry]:
    actors = {}
    for _where, row in csv_rows(tree, "VideoDemographics.csv", ("ActorID", "Age", "Sex", "Race", "Ethnicity")):
        if "__bad__" not in row:
            actors[row["ActorID"]] = row
    for rel in tree.walk("AudioWAV", (".wav",)):
        where = tree.uri(rel)
        parts = Path(rel).stem.split("_")
        if len(parts) != 4 or parts[1] not in SENTENCES or parts[2] not in EMOTIONS or parts[3] not in LEVELS:
            yield bad(where, f"{where}: file name must be <actor>_<sentence>_<emotion>_<level>.wav with known codes")
            continue
        actor = actors.get(parts[0])
        if actor is None:
            yield bad(where, f"{where}: actor {parts[0]} is missing from VideoDemographics.csv")
            continue
        yield Entry(rel=rel, group=parts[0], where=where, meta={
            "domain": "speech", "transcript": SENTENCES[parts[1]], "language": "English", "speaker": parts[0],
            "emotion": EMOTIONS[parts[2]], "gender": actor["Sex"], "age": actor["Age"],
            "attributes": {"Emotion intensity": LEVELS[parts[3]], "Race": actor["Race"],
                           "Ethnicity": actor["Ethnicity"]}})
