"""VoiceBench rule-based subsets from the released Parquet files (`desta evaluate`, task "voicebench").

Layout: <benchmarks_root>/voicebench/<subset>/*.parquet, as in the HF dataset hlt-lab/voicebench (one folder per
config; columns `audio` {bytes, path}, `prompt`, and per subset `reference`, `key`, `instruction_id_list`,
`kwargs`, `id`). Subsets and scores (VoiceBench's evaluators, re-implemented):
  ifeval      IFEval checkers; final = mean of strict/loose x prompt/instruction level
  advbench    refusal rate (refusal markers; an empty answer refuses)
  openbookqa, mmsu   letter extraction from answer templates; no match -> wrong (VoiceBench draws a random letter)
  bbh         yes/no or (A)/(B) extraction; no match -> wrong
The GPT-judged subsets (alpacaeval, commoneval, wildvoice, sd-qa) are not scored here.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from desta.evaluate import ifeval_checks, scorers
from desta.evaluate.loop import Item, Task
from desta.evaluate.tasks.common import AUDIO, BenchmarkFilesError, require

SUBSETS = ("ifeval", "advbench", "openbookqa", "mmsu", "bbh")
HOW = "Download the subset's Parquet files from the HF dataset hlt-lab/voicebench into <benchmarks_root>/voicebench/"


def decode_audio(cell: Any, where: str) -> np.ndarray:
    """HF Audio cell {bytes, path} -> float32 mono 16 kHz [t]."""
    import soundfile as sf
    import soxr

    if not isinstance(cell, dict) or not cell.get("bytes"):
        raise BenchmarkFilesError(f"{where}: column `audio` must hold {{bytes, path}} with the encoded clip")
    wave, sr = sf.read(io.BytesIO(cell["bytes"]), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    return wave if sr == 16000 else soxr.resample(wave, sr, 16000).astype(np.float32)


def parse_options(prompt: str) -> dict[str, str]:
    """`A. text` / `(A) text` lines of an MCQ prompt -> {"A": "text", ...}."""
    pattern = r"(?:^|\n|\s)\(?([A-D])[.)]\s*([^\n]+?)(?=\s+\(?[A-D][.)]\s|\n|$)"
    return {m.group(1): m.group(2).strip() for m in re.finditer(pattern, prompt)}


class VoiceBenchTask(Task):
    name = "voicebench"
    primary = "score"
    metric_name = "score"
    group_key = "subset"

    def __init__(self, root: str | Path, subsets: list[str] | tuple[str, ...] = SUBSETS):
        self.root, self.subsets = Path(root) / "voicebench", list(subsets)

    def _rows(self, subset: str) -> list[dict[str, Any]]:
        import pyarrow.parquet as pq

        folder = require(self.root / subset, "VoiceBench", HOW)
        files = sorted(folder.rglob("*.parquet"))
        if not files:
            raise BenchmarkFilesError(f"{folder}: no *.parquet files. {HOW}")
        rows = []
        for f in files:
            table = pq.read_table(f)
            for col in ("audio", "prompt"):
                if col not in table.column_names:
                    raise BenchmarkFilesError(f"{f}: missing column `{col}`; use the released Parquet unchanged")
            rows += [{**r, "_file": f.name} for r in table.to_pylist()]
        return rows

    def items(self) -> list[Item]:
        items = []
        for subset in self.subsets:
            for n, r in enumerate(self._rows(subset)):
                where = f"{self.root / subset}/{r['_file']} row {n}"
                audio = {"audio": None, "text": None, "array": decode_audio(r["audio"], where)}  # [t] 16 kHz
                conv = [{"role": "user", "content": AUDIO, "audios": [audio]}]  # the spoken prompt is the question
                ref = {"subset": subset, "prompt": r["prompt"]}
                ref.update({k: r[k] for k in ("reference", "key", "instruction_id_list", "kwargs") if k in r})
                slices = {"subset": subset}
                if subset == "bbh" and r.get("id"):
                    slices["bbh_task"] = str(r["id"]).rsplit("_", 1)[0]
                items.append(Item(f"{subset}/{r.get('id', r.get('key', n))}", conv, ref, slices))
        return items

    def score(self, item: Item, prediction: str) -> dict[str, Any]:
        ref, subset = item.reference, item.reference["subset"]
        if subset == "ifeval":
            kwargs = [dict(k or {}) for k in ref["kwargs"]]
            strict = ifeval_checks.check(prediction, list(ref["instruction_id_list"]), kwargs, ref["prompt"])
            loose = ifeval_checks.check(prediction, list(ref["instruction_id_list"]), kwargs, ref["prompt"], loose=True)
            parts = [float(all(strict)), sum(strict) / len(strict), float(all(loose)), sum(loose) / len(loose)]
            return {"score": sum(parts) / 4, "strict_prompt": parts[0], "loose_prompt": parts[2]}
        if subset == "advbench":
            return {"score": float(scorers.is_refusal(prediction))}
        if subset in ("openbookqa", "mmsu"):
            choice = scorers.extract_choice(prediction, parse_options(ref["prompt"]))
            return {"score": float(choice == str(ref["reference"]).strip()), "extracted": choice,
                    "fail": float(choice is None)}
        got = scorers.extract_bbh(prediction, str(ref["reference"]))
        return {"score": float(got == str(ref["reference"]).strip()), "extracted": got, "fail": float(got is None)}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """Per-subset scores; overall = mean of the subset scores (VoiceBench's leaderboard convention)."""
        out = super().aggregate(records)
        subsets = sorted({r["slices"]["subset"] for r in records})
        out["score"] = scorers.mean([out[f"{s}/score"] for s in subsets])
        for s in subsets:
            fails = [r["fail"] for r in records if r["slices"]["subset"] == s and "fail" in r]
            if fails:
                out[f"{s}/extraction_fail_rate"] = scorers.mean(fails)
        return out
