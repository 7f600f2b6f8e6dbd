"""MMAU test-mini from its released file (`desta evaluate`, task "mmau"), scored as published (official/mmau.py).

Expected layout: <benchmarks_root>/mmau/mmau-test-mini.json (github.com/Sakshi113/MMAU, pin the commit) and the
audio it names, e.g. <benchmarks_root>/mmau/test-mini-audios/<uuid>.wav (HF gamma-lab-umd/MMAU-test-mini).
Protocol (DeSTA2.5 inference_desta25_audio.py): system prompt asking for `The correct answer is: "___"`, user
`<|AUDIO|>\\n\\n{question} Choose from the following options: "a", "b", ...`, greedy, 512 new tokens; every exact
`The correct answer is: ` is deleted before MMAU's string match. Reported: accuracy overall, per task (sound / music /
speech), per difficulty, category and sub-category; `answer_span_accuracy` (not official) matches only the text
after the last answer phrase.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desta.evaluate import scorers
from desta.evaluate.loop import Item, Task
from desta.evaluate.official import mmau as official
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
            slices = {"task": r["task"], **{k.replace("-", "_"): str(r[k]) for k in ("difficulty", "category",
                                                                                  "sub-category") if r.get(k)}}
            items.append(Item(str(r["id"]), conv, {"answer": r["answer"], "choices": r["choices"]}, slices))
        return items

    def score(self, item: Item, prediction: str) -> dict[str, Any]:
        ref = item.reference
        span = scorers.mmau_string_match(ref["answer"], official.answer_span(prediction), ref["choices"])
        return {"correct": float(official.verdict(ref["answer"], ref["choices"], prediction)),
                "answer_span_correct": float(span), "n_options": len(ref["choices"])}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        out = super().aggregate(records)
        out["chance"] = scorers.chance_level([r["n_options"] for r in records])
        out["answer_span_accuracy"] = scorers.mean([r["answer_span_correct"] for r in records])
        return out
