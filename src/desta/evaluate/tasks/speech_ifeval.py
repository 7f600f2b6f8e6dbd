"""Speech-IFEval from its released files, scored as its official code does (`desta evaluate`, task "speech_ifeval").

Layout: <benchmarks_root>/speech_ifeval/ is the repo's `data/` folder unchanged (github.com/kehanlu/Speech-IFEval):
eval_data/{closed_ended_questions,creative_writing,chain-of-thought}.jsonl, and audios/ from HF
kehanlu/Speech-IFEval `audios.tar` (audio_filepath is relative to audios/). Every item is answered twice: by the audio
model (system "Follow the given instructions.", the audio, the instruction) and by the text-only backbone on
`Speech Input: {textual_audio}\\n\\n{instruction}` (the official reference run). Closed-ended and creative writing:
Speech-IFEval's own checkers, instruction-level rate; chain-of-thought: the official judge prompt and verdict parsing
(desta/evaluate/official/speech_ifeval.py). IFrate = mean of the three rates; forgetting rate =
(IFrate_model - IFrate_backbone) / IFrate_backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desta.evaluate import scorers
from desta.evaluate.judge import JudgeFn
from desta.evaluate.loop import Item, Task
from desta.evaluate.official import speech_ifeval as official
from desta.evaluate.tasks.common import IF_SYSTEM, BenchmarkFilesError, audio_conversation, read_jsonl, require

FILES = {"closed_ended": "closed_ended_questions.jsonl", "creative_writing": "creative_writing.jsonl",
         "cot": "chain-of-thought.jsonl"}
RULE_FIELDS = ("id", "audio_filepath", "textual_audio", "instruction", "instruction_id_list", "kwargs")
COT_FIELDS = ("audio_filepath", "textual_audio", "instruction")  # the released CoT file has no `id`
HOW = ("Copy the `data/eval_data/` folder of github.com/kehanlu/Speech-IFEval to <benchmarks_root>/speech_ifeval/"
       "eval_data/ and extract `audios.tar` (HF dataset kehanlu/Speech-IFEval) into <benchmarks_root>/speech_ifeval/")


class SpeechIFEvalTask(Task):
    name = "speech_ifeval"
    primary = "followed"
    metric_name = "following_rate"

    def __init__(self, root: str | Path, judge: JudgeFn | None = None, include_cot: bool = True):
        self.root = Path(root) / "speech_ifeval"
        self.judge, self.include_cot = judge, include_cot and judge is not None
        self._rows: dict[str, list[dict[str, Any]]] | None = None

    def parts(self) -> list[str]:
        return [p for p in FILES if p != "cot" or self.include_cot]

    def rows(self) -> dict[str, list[dict[str, Any]]]:
        """part -> released rows, each with its item id (`id` where the file has one, else the line's index)."""
        if self._rows is None:
            self._rows = {}
            for part in self.parts():
                path = require(self.root / "eval_data" / FILES[part], "Speech-IFEval", HOW)
                rows = read_jsonl(path, COT_FIELDS if part == "cot" else RULE_FIELDS)
                self._rows[part] = [{**r, "_id": f"{part}/{r['id'] if part != 'cot' else n}"}
                                    for n, r in enumerate(rows)]
        return self._rows

    def check_files(self) -> None:
        """Every released file, field and audio clip is there, and the checkers load (before any model does)."""
        missing = [r["audio_filepath"] for rows in self.rows().values() for r in rows
                   if not (self.root / "audios" / r["audio_filepath"]).is_file()]
        if missing:
            raise BenchmarkFilesError(f"{self.root / 'audios'}: {len(missing)} audio file(s) named by "
                                      f"eval_data/*.jsonl are missing, e.g. {missing[0]}. {HOW}")
        official.checker_classes()

    def items(self) -> list[Item]:
        items = []
        for part, rows in self.rows().items():
            for r in rows:
                ref = {"part": part, "instruction": r["instruction"],
                       "instruction_id_list": r.get("instruction_id_list", []), "kwargs": r.get("kwargs", [])}
                slices = {"part": part, **({"dataset": str(r["dataset"])} if r.get("dataset") else {})}
                audio = str((self.root / "audios" / r["audio_filepath"]).resolve())
                items.append(Item(f"{r['_id']}:model", audio_conversation(audio, r["instruction"], IF_SYSTEM), ref,
                                  slices))
                text = f"Speech Input: {r['textual_audio']}\n\n{r['instruction']}"
                items.append(Item(f"{r['_id']}:backbone", audio_conversation(None, text, IF_SYSTEM), ref, slices,
                                  runner="backbone"))
        return items

    def score_batch(self, items: list[Item], predictions: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in items]
        cot = [k for k, i in enumerate(items) if i.reference["part"] == "cot"]
        if cot:
            prompts = [official.cot_prompt(items[k].reference["instruction"], predictions[k]) for k in cot]
            for k, verdict in zip(cot, self.judge(prompts), strict=True):
                parsed = official.parse_cot_verdict(verdict)
                out[k] = {"followed": None if parsed is None else float(parsed), "judge": verdict}
        for k, item in enumerate(items):
            if item.reference["part"] != "cot":
                ref = item.reference
                flags = official.verdicts(predictions[k], ref["instruction_id_list"], ref["kwargs"])
                out[k] = {"followed": float(all(flags)), "follow_instruction_list": flags}
        return out

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        out: dict[str, float] = {}
        ifrates = {}
        for runner in ("model", "backbone"):
            mine = [r for r in records if r["runner"] == runner]
            rates = {p: part_rate([r for r in mine if r["slices"]["part"] == p], p) for p in FILES}
            rates = {p: v for p, v in rates.items() if v is not None}
            prefix = "" if runner == "model" else "backbone/"
            out.update({f"{prefix}{p}_following_rate": v for p, v in rates.items()})
            if rates:
                key = "ifrate" if len(rates) == len(FILES) else "ifrate_rule_based"  # without CoT: 2-part mean
                ifrates[runner] = out[f"{prefix}{key}"] = scorers.mean(list(rates.values()))
        if ifrates.get("backbone") and "model" in ifrates:
            out["forgetting_rate"] = scorers.forgetting_rate(ifrates["model"], ifrates["backbone"])
        out["judge_unparsed"] = float(sum(1 for r in records if r["slices"]["part"] == "cot" and r.get("followed")
                                          is None))
        return out


def part_rate(records: list[dict[str, Any]], part: str) -> float | None:
    """Rule-checked parts: instruction-level rate (official "ALL"); CoT: share of parsed judge verdicts that are YES."""
    if part == "cot":
        return scorers.mean([r["followed"] for r in records if r.get("followed") is not None])
    return official.following_rate([r["follow_instruction_list"] for r in records if "follow_instruction_list" in r])
