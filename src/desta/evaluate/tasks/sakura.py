"""SAKURA from its released files, judged as the official evaluator does (`desta evaluate`, task "sakura").

Layout: <benchmarks_root>/sakura/ is a copy of github.com/ckyang1124/SAKURA (pin a1fdb14): data/<Track>/metadata.json
(a mapping keyed by the clip's path relative to the repository root, `data/<Track>/audio/x.wav`, to {attribute_label,
single_instruction, single_answer, multi_instruction, multi_answer}) or, when it is absent, data/<Track>/metadata.csv
(column `file` = the name inside data/<Track>/audio/), and the audio under data/<Track>/audio/. Each clip gives a
single-hop and a multi-hop question (options inlined). Prompt: the model's one inference layout (desta.conversation:
system "Focus on the audio clips and instructions.", user `<|AUDIO|>\\n\\n{instruction}`; DeSTA2.5 publishes no SAKURA
prompt). Scoring (official/sakura.py): the official judge prompt, the
reply parsed as `llm_judge.py` does, a reply that is not exactly correct/incorrect counted as not correct. Reported:
accuracy per track and hop (sakura/<Track>_<hop>/accuracy), per hop pooled, the leaderboard's per-hop average over
tracks (single_average, multi_average) and the number of invalid judgements.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from desta.evaluate import scorers
from desta.evaluate.judge import JudgeFn
from desta.evaluate.loop import Item, Task
from desta.evaluate.official import sakura as official
from desta.evaluate.tasks.common import DESTA_SYSTEM, BenchmarkFilesError, audio_conversation, check_fields, require

TRACKS = ("Animal", "Emotion", "Gender", "Language")
HOPS = ("single", "multi")
FIELDS = ("single_instruction", "single_answer", "multi_instruction", "multi_answer")
HOW = ("Clone github.com/ckyang1124/SAKURA (commit a1fdb14) into <benchmarks_root>/sakura/ so that "
       "<benchmarks_root>/sakura/data/<Track>/metadata.json and data/<Track>/audio/ exist")


def read_track(root: Path, track: str) -> list[tuple[str, dict[str, Any]]]:
    """[(clip path relative to `root`, row)] of one track, from metadata.json (released keys `data/<Track>/audio/x.wav`)
    or else metadata.csv (`file` = name in data/<Track>/audio/), in file order."""
    folder = root / "data" / track
    js, cs = folder / "metadata.json", folder / "metadata.csv"
    if js.is_file():
        try:
            raw = json.loads(js.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise BenchmarkFilesError(f"{js}: not valid JSON ({err.msg}); use the released file unchanged") from None
        if not isinstance(raw, dict):
            raise BenchmarkFilesError(f"{js}: expected the released mapping 'data/{track}/audio/<clip>.wav' -> fields, "
                                      f"got a {type(raw).__name__}; use the released file unchanged")
        rows = list(raw.items())
        where = str(js)
    else:
        with open(require(cs, "SAKURA", HOW), encoding="utf-8", newline="") as fh:
            rows = [(f"data/{track}/audio/{r.get('file')}", r) for r in csv.DictReader(fh)]
        check_fields(rows[0][1] if rows else {}, ("file", *FIELDS), f"{cs} (header)")
        where = str(cs)
    for key, row in rows:
        check_fields(row, FIELDS, f"{where}[{key}]")
    return rows


class SakuraTask(Task):
    name = "sakura"
    group_key = "track_hop"

    def __init__(self, root: str | Path, judge: JudgeFn, tracks: list[str] | tuple[str, ...] = TRACKS):
        self.root, self.judge, self.tracks = Path(root) / "sakura", judge, list(tracks)

    def _audio(self, key: str, track: str) -> str:
        path = self.root / key
        if not path.is_file():
            raise BenchmarkFilesError(f"{path}: audio named by data/{track}/metadata ({key!r}) is missing. {HOW}")
        return str(path.resolve())

    def items(self) -> list[Item]:
        require(self.root / "data", "SAKURA", HOW)
        items = []
        for track in self.tracks:
            for key, row in read_track(self.root, track):
                audio = self._audio(key, track)
                for hop in HOPS:
                    q, a = row[f"{hop}_instruction"], row[f"{hop}_answer"]
                    conv = audio_conversation(audio, q, DESTA_SYSTEM)
                    items.append(Item(f"{key}#{hop}", conv, {"question": q, "answer": a},
                                      {"track_hop": f"{track}_{hop}", "hop": hop, "track": track}))
        return items

    def score_batch(self, items: list[Item], predictions: list[str]) -> list[dict[str, Any]]:
        replies = self.judge([official.judge_prompt(i.reference["question"], i.reference["answer"], p)
                              for i, p in zip(items, predictions, strict=True)])
        out = []
        for reply in replies:
            verdict = official.verdict(reply)
            out.append({"correct": float(verdict == "correct"), "verdict": verdict, "judge": reply})
        return out

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        out = super().aggregate(records)
        for hop in HOPS:  # the leaderboard's "Average": mean of the per-track accuracies
            per_track = [out[f"{t}_{hop}/accuracy"] for t in self.tracks if f"{t}_{hop}/accuracy" in out]
            if per_track:
                out[f"{hop}_average"] = scorers.mean(per_track)
        out["judge_invalid"] = float(sum(1 for r in records if r.get("verdict") == "invalid"))
        return out
