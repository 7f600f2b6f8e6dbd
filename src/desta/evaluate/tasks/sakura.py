"""SAKURA from its released files, judged by an LLM (`desta evaluate`, task "sakura").

Layout: <benchmarks_root>/sakura/<Track>/metadata.json for Track in Animal, Emotion, Gender, Language (the repo's
data/<Track>/ folders, github.com/ckyang1124/SAKURA) with the audio files it names, found in <Track>/audio/ or
<Track>/. metadata.json is a list of {file, attribute_label, single_instruction, single_answer,
multi_instruction, multi_answer} (a mapping file -> fields is accepted too). Each clip gives a single-hop and a
multi-hop question (options inlined). Scoring: the judge (official: gpt-4o-2024-11-20, temperature 0, top_p 0.9)
returns `Judgement: correct|incorrect`; accuracy per track and hop, plus the single/multi-hop averages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desta.evaluate import scorers
from desta.evaluate.judge import JudgeFn, sakura_prompt
from desta.evaluate.loop import Item, Task
from desta.evaluate.tasks.common import (
    DESTA_SYSTEM,
    BenchmarkFilesError,
    audio_conversation,
    check_fields,
    read_json_list,
    require,
)

TRACKS = ("Animal", "Emotion", "Gender", "Language")
FIELDS = ("file", "single_instruction", "single_answer", "multi_instruction", "multi_answer")
HOW = "Copy data/<Track>/ (metadata.json + audio) from github.com/ckyang1124/SAKURA into <benchmarks_root>/sakura/"


def read_metadata(path: Path) -> list[dict[str, Any]]:
    import json

    raw = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(raw, dict):
        rows = [{"file": k, **v} for k, v in raw.items()]
        for n, r in enumerate(rows):
            check_fields(r, FIELDS, f"{path}[{n}]")
        return rows
    return read_json_list(path, FIELDS)


class SakuraTask(Task):
    name = "sakura"
    group_key = "track_hop"

    def __init__(self, root: str | Path, judge: JudgeFn, tracks: list[str] | tuple[str, ...] = TRACKS):
        self.root, self.judge, self.tracks = Path(root) / "sakura", judge, list(tracks)

    def _audio(self, track: str, name: str) -> str:
        for base in (self.root / track / "audio", self.root / track):
            if (base / name).exists():
                return str((base / name).resolve())
        raise BenchmarkFilesError(f"{self.root / track}: audio file {name!r} named in metadata.json is missing. {HOW}")

    def items(self) -> list[Item]:
        items = []
        for track in self.tracks:
            for r in read_metadata(require(self.root / track / "metadata.json", "SAKURA", HOW)):
                audio = self._audio(track, r["file"])
                for hop in ("single", "multi"):
                    q, a = r[f"{hop}_instruction"], r[f"{hop}_answer"]
                    items.append(Item(f"{track}/{r['file']}#{hop}", audio_conversation(audio, q, DESTA_SYSTEM),
                                      {"question": q, "answer": a}, {"track_hop": f"{track}_{hop}", "hop": hop,
                                                                      "track": track}))
        return items

    def score_batch(self, items: list[Item], predictions: list[str]) -> list[dict[str, Any]]:
        verdicts = self.judge([sakura_prompt(i.reference["question"], i.reference["answer"], p)
                               for i, p in zip(items, predictions, strict=True)])
        out = []
        for v in verdicts:
            parsed = scorers.parse_judgement(v)
            out.append({"correct": None if parsed is None else float(parsed), "judge": v})
        return out

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        out = super().aggregate(records)
        out["judge_unparsed"] = float(sum(1 for r in records if r.get("correct") is None))
        return out
