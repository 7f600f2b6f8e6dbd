"""MMAU test-mini from its released file (`desta evaluate`, task "mmau"), scored with MMAU's official string match.

Expected layout: <benchmarks_root>/mmau/mmau-test-mini.json (github.com/Sakshi113/MMAU, pin the commit) and the
audio it names, e.g. <benchmarks_root>/mmau/test-mini-audios/<uuid>.wav (HF gamma-lab-umd/MMAU-test-mini).
Protocol (DeSTA2.5 inference_desta25_audio.py): system prompt asking for `The correct answer is: "___"`, user
`<|AUDIO|>\\n\\n{question} Choose from the following options: "a", "b", ...`; the prefix is stripped before matching.
Reported: accuracy overall, per task (sound / music / speech), per difficulty and per category.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desta.evaluate import scorers
from desta.evaluate.loop import Item, Task
from desta.evaluate.tasks.common import (
    MCQ_SYSTEM,
    audio_conversation,
    mcq_prompt,
    read_json_list,
    require,
    resolve_audio,
)

FIELDS = ("id", "audio_id", "question", "choices", "answer", "task")
HOW = ("Download mmau-test-mini.json from github.com/Sakshi113/MMAU and the audios tarball from the HF dataset "
       "gamma-lab-umd/MMAU-test-mini, and place them under <benchmarks_root>/mmau/")


class MMAUTask(Task):
    name = "mmau"
    group_key = "task"

    def __init__(self, root: str | Path, file: str = "mmau-test-mini.json"):
        self.root = Path(root) / "mmau"
        self.file = self.root / file

    def items(self) -> list[Item]:
        rows = read_json_list(require(self.file, "MMAU", HOW), FIELDS)
        items = []
        for r in rows:
            if r["answer"] not in r["choices"]:
                raise ValueError(f"{self.file}: item {r['id']}: answer {r['answer']!r} is not one of its choices")
            conv = audio_conversation(resolve_audio(self.root, r["audio_id"]), mcq_prompt(r["question"], r["choices"]),
                                      MCQ_SYSTEM)
            slices = {"task": r["task"], **{k: str(r[k]) for k in ("difficulty", "category") if r.get(k)}}
            items.append(Item(str(r["id"]), conv, {"answer": r["answer"], "choices": r["choices"]}, slices))
        return items

    def score(self, item: Item, prediction: str) -> dict[str, Any]:
        ref = item.reference
        hit = scorers.mmau_string_match(ref["answer"], scorers.strip_answer_prefix(prediction), ref["choices"])
        return {"correct": float(hit), "n_options": len(ref["choices"])}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        out = super().aggregate(records)
        out["chance"] = scorers.chance_level([r["n_options"] for r in records])
        return out
