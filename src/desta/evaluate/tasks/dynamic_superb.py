"""Dynamic-SUPERB Phase-2 task instances from their released HF datasets, judged by an LLM (task "dynamic_superb").

Layout: <benchmarks_root>/dynamic_superb/<TaskInstance>/**/*.parquet, one folder per HF dataset of the org
DynamicSuperb (e.g. EmotionRecognition_TESS), columns `audio` {bytes, path}, `instruction`, `label`
(+ `audio2` for pairwise tasks). Each answer is compared with the label by the judge (Phase-2 uses GPT-4o with
constrained output; the exact official prompt is not public here, so this is an approximation, see
docs/evaluation.md). Reported: accuracy per task instance and the mean over instances.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from desta.evaluate import scorers
from desta.evaluate.judge import JudgeFn, dsuperb_prompt
from desta.evaluate.loop import Item, Task
from desta.evaluate.tasks.common import AUDIO, DESTA_SYSTEM, BenchmarkFilesError, require
from desta.evaluate.tasks.voicebench import decode_audio

HOW = ("Download each task instance's Parquet files from the HF org DynamicSuperb into "
       "<benchmarks_root>/dynamic_superb/<TaskInstance>/")


class DynamicSuperbTask(Task):
    name = "dynamic_superb"
    group_key = "instance"

    def __init__(self, root: str | Path, judge: JudgeFn, instances: list[str] | None = None):
        self.root, self.judge, self.instances = Path(root) / "dynamic_superb", judge, instances

    def _instances(self) -> list[Path]:
        require(self.root, "Dynamic-SUPERB", HOW)
        names = self.instances or sorted(p.name for p in self.root.iterdir() if p.is_dir())
        if not names:
            raise BenchmarkFilesError(f"{self.root}: no task folders. {HOW}")
        return [require(self.root / n, "Dynamic-SUPERB", HOW) for n in names]

    def items(self) -> list[Item]:
        import pyarrow.parquet as pq

        items = []
        for folder in self._instances():
            files = sorted(folder.rglob("*.parquet"))
            if not files:
                raise BenchmarkFilesError(f"{folder}: no *.parquet files. {HOW}")
            for f in files:
                for n, r in enumerate(pq.read_table(f).to_pylist()):
                    missing = [k for k in ("audio", "instruction", "label") if k not in r]
                    if missing:
                        raise BenchmarkFilesError(f"{f} row {n}: missing column(s) {', '.join(missing)}")
                    audios = [{"audio": None, "text": None, "array": decode_audio(r[k], f"{f} row {n}")}
                              for k in ("audio", "audio2") if r.get(k)]
                    content = "\n".join([AUDIO] * len(audios)) + f"\n\n{r['instruction']}"
                    conv = [{"role": "system", "content": DESTA_SYSTEM},
                            {"role": "user", "content": content, "audios": audios}]
                    items.append(Item(f"{folder.name}/{r.get('file', n)}", conv,
                                      {"instruction": r["instruction"], "label": str(r["label"])},
                                      {"instance": folder.name}))
        return items

    def score_batch(self, items: list[Item], predictions: list[str]) -> list[dict[str, Any]]:
        verdicts = self.judge([dsuperb_prompt(i.reference["instruction"], i.reference["label"], p)
                               for i, p in zip(items, predictions, strict=True)])
        return [{"correct": None if (v2 := scorers.parse_judgement(v)) is None else float(v2), "judge": v}
                for v in verdicts]

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        out = super().aggregate(records)
        names = sorted({r["slices"]["instance"] for r in records})
        out["macro_accuracy"] = scorers.mean([out[f"{n}/accuracy"] for n in names if f"{n}/accuracy" in out])
        out["judge_unparsed"] = float(sum(1 for r in records if r.get("correct") is None))
        return out
