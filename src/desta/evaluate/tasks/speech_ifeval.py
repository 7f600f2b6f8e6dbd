"""Speech-IFEval from its released files (`desta evaluate`, task "speech_ifeval").

Layout: <benchmarks_root>/speech_ifeval/{closed_ended_questions.jsonl, creative_writing.jsonl,
chain-of-thought.jsonl} (github.com/kehanlu/Speech-IFEval data/eval_data/) and the audio from HF
kehanlu/Speech-IFEval `audios.tar` extracted to <benchmarks_root>/speech_ifeval/audios/ (audio_filepath is resolved
against audios/ first, then the benchmark folder). Every item is answered twice: by the audio model (audio +
instruction, system "Follow the given instructions.") and by the text-only backbone on
`Speech Input: {textual_audio}\\n\\n{instruction}` (the paper's reference). Closed-ended and creative-writing are
scored with the IFEval checkers (strict); chain-of-thought by the judge (reasoning YES/NO). IFrate = mean of the
three rates; forgetting rate = (IFrate_model - IFrate_backbone) / IFrate_backbone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desta.evaluate import ifeval_checks, scorers
from desta.evaluate.judge import JudgeFn, reasoning_prompt
from desta.evaluate.loop import Item, Task
from desta.evaluate.tasks.common import IF_SYSTEM, audio_conversation, read_jsonl, require

FILES = {"closed_ended": "closed_ended_questions.jsonl", "creative_writing": "creative_writing.jsonl",
         "cot": "chain-of-thought.jsonl"}
FIELDS = ("id", "audio_filepath", "textual_audio", "instruction", "instruction_id_list", "kwargs")
HOW = ("Copy data/eval_data/*.jsonl from github.com/kehanlu/Speech-IFEval and extract audios.tar from the HF dataset "
       "kehanlu/Speech-IFEval into <benchmarks_root>/speech_ifeval/audios/")


class SpeechIFEvalTask(Task):
    name = "speech_ifeval"
    primary = "followed"
    metric_name = "following_rate"

    def __init__(self, root: str | Path, judge: JudgeFn | None = None, include_cot: bool = True):
        self.root = Path(root) / "speech_ifeval"
        self.judge, self.include_cot = judge, include_cot and judge is not None

    def _audio(self, rel: str) -> str:
        for base in (self.root / "audios", self.root):
            if (base / rel).exists():
                return str((base / rel).resolve())
        return str((self.root / "audios" / rel).resolve())

    def items(self) -> list[Item]:
        items = []
        for part, fname in FILES.items():
            if part == "cot" and not self.include_cot:
                continue
            req = FIELDS if part != "cot" else FIELDS[:4]
            for r in read_jsonl(require(self.root / fname, "Speech-IFEval", HOW), req):
                ref = {"part": part, "instruction": r["instruction"],
                       "instruction_id_list": r.get("instruction_id_list", []), "kwargs": r.get("kwargs", [])}
                slices = {"part": part, **({"dataset": str(r["dataset"])} if r.get("dataset") else {})}
                items.append(Item(f"{r['id']}:model", audio_conversation(self._audio(r["audio_filepath"]),
                                                                         r["instruction"], IF_SYSTEM), ref, slices))
                text = f"Speech Input: {r['textual_audio']}\n\n{r['instruction']}"
                items.append(Item(f"{r['id']}:backbone", audio_conversation(None, text, IF_SYSTEM), ref, slices,
                                  runner="backbone"))
        return items

    def score_batch(self, items: list[Item], predictions: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in items]
        cot = [k for k, i in enumerate(items) if i.reference["part"] == "cot"]
        if cot:
            verdicts = self.judge([reasoning_prompt(items[k].reference["instruction"], predictions[k]) for k in cot])
            for k, v in zip(cot, verdicts, strict=True):
                parsed = scorers.parse_judgement(v)
                out[k] = {"followed": None if parsed is None else float(parsed), "judge": v}
        for k, item in enumerate(items):
            if item.reference["part"] != "cot":
                ref = item.reference
                ok = ifeval_checks.check(predictions[k], ref["instruction_id_list"], ref["kwargs"], ref["instruction"])
                out[k] = {"followed": float(all(ok))}
        return out

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        out: dict[str, float] = {}
        ifrates = {}
        for runner in ("model", "backbone"):
            mine = [r for r in records if r["runner"] == runner and r.get("followed") is not None]
            rates = {p: scorers.mean([r["followed"] for r in mine if r["slices"]["part"] == p]) for p in FILES}
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
