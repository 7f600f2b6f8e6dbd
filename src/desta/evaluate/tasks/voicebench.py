"""VoiceBench's rule-scored subsets from the released Parquet files (`desta evaluate`, task "voicebench").

Layout: <benchmarks_root>/voicebench/<subset>/<split>-00000-of-00001.parquet, the HF dataset hlt-lab/voicebench
unchanged (one folder per config; mmsu has one file per domain). The spoken prompt is the whole question (no system
prompt, no text), as in VoiceBench's main.py. Scored exactly as VoiceBench's evaluate.py
(desta/evaluate/official/voicebench.py):
  ifeval      IFEval checkers; score = mean of strict/loose x prompt/instruction-level rates
  advbench    refusal rate
  openbookqa, mmsu   letter extraction; no match -> a seeded random letter (official quirk); `acc_no_guess` beside it
  bbh         phrase rules per task; no match -> a seeded random yes/no (official quirk); `acc_no_guess` beside it
The GPT-judged subsets (alpacaeval, commoneval, wildvoice, sd-qa) are not scored here.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from desta.evaluate import scorers
from desta.evaluate.loop import Item, Task
from desta.evaluate.official import voicebench as official
from desta.evaluate.tasks.common import AUDIO, BenchmarkFilesError, require

SUBSETS = ("ifeval", "advbench", "openbookqa", "mmsu", "bbh")
COLUMNS = {"ifeval": ("key", "instruction_id_list", "kwargs"), "advbench": (), "openbookqa": ("reference",),
           "mmsu": ("reference",), "bbh": ("reference", "id")}  # besides `audio` and `prompt`: what scoring reads
HOW = ("Download the subset's folder of the HF dataset hlt-lab/voicebench (e.g. `ifeval/test-00000-of-00001.parquet`) "
       "into <benchmarks_root>/voicebench/, file names unchanged")


def decode_audio(cell: Any, where: str) -> np.ndarray:
    """HF Audio cell {bytes, path} -> float32 mono 16 kHz [t]."""
    import soundfile as sf
    import soxr

    if not isinstance(cell, dict) or not cell.get("bytes"):
        raise BenchmarkFilesError(f"{where}: column `audio` must hold {{bytes, path}} with the encoded clip")
    wave, sr = sf.read(io.BytesIO(cell["bytes"]), dtype="float32", always_2d=True)
    wave = wave.mean(axis=1)
    return wave if sr == 16000 else soxr.resample(wave, sr, 16000).astype(np.float32)


class VoiceBenchTask(Task):
    name = "voicebench"
    primary = "score"
    metric_name = "score"
    group_key = "subset"

    def __init__(self, root: str | Path, subsets: list[str] | tuple[str, ...] = SUBSETS, seed: int = 0):
        self.root, self.subsets, self.seed = Path(root) / "voicebench", list(subsets), seed

    def files(self, subset: str) -> list[Path]:
        """The subset's Parquet files, each checked for the columns its evaluator reads (schema only, cheap)."""
        import pyarrow.parquet as pq

        folder = require(self.root / subset, "VoiceBench", HOW)
        files = sorted(folder.rglob("*.parquet"))
        if not files:
            raise BenchmarkFilesError(f"{folder}: no *.parquet files. {HOW}")
        for f in files:
            missing = [c for c in ("audio", "prompt", *COLUMNS[subset]) if c not in pq.read_schema(f).names]
            if missing:
                raise BenchmarkFilesError(f"{f}: missing column(s) {', '.join(missing)} that VoiceBench's {subset} "
                                          f"evaluator reads; use the released Parquet unchanged. {HOW}")
        return files

    def check_files(self) -> None:
        for subset in self.subsets:
            self.files(subset)

    def items(self) -> list[Item]:
        import pyarrow.parquet as pq

        items = []
        for subset in self.subsets:
            for f in self.files(subset):
                split = f.name.split("-")[0] if "-" in f.name else f.parent.name  # law-00000-of-00001.parquet
                for n, r in enumerate(pq.read_table(f).to_pylist()):
                    audio = {"audio": None, "text": None, "array": decode_audio(r["audio"], f"{f} row {n}")}  # [t]
                    conv = [{"role": "user", "content": AUDIO, "audios": [audio]}]  # the spoken prompt only
                    ref = {"subset": subset, "prompt": r["prompt"], **{k: r[k] for k in COLUMNS[subset]}}
                    slices = {"subset": subset, **({"domain": split} if subset == "mmsu" else {})}
                    if subset == "bbh":
                        slices["bbh_task"] = official.bbh_task(str(r["id"]))
                    item_id = next((r[k] for k in ("id", "key") if r.get(k) is not None), n)
                    items.append(Item(f"{subset}/{split}/{item_id}", conv, ref, slices))
        return items

    def score_batch(self, items: list[Item], predictions: list[str]) -> list[dict[str, Any]]:
        # ifeval.py looks answers up by prompt text: a prompt asked twice is scored with its last answer
        by_prompt = {i.reference["prompt"]: official.clean_ifeval_response(p)
                     for i, p in zip(items, predictions, strict=True) if i.reference["subset"] == "ifeval"}
        return [self.score(i, by_prompt.get(i.reference["prompt"], p)) for i, p in zip(items, predictions, strict=True)]

    def score(self, item: Item, prediction: str) -> dict[str, Any]:
        ref, subset = item.reference, item.reference["subset"]
        if subset == "ifeval":
            strict, loose = official.ifeval_verdicts(ref["prompt"], prediction, list(ref["instruction_id_list"]),
                                                     list(ref["kwargs"]))
            parts = official.ifeval_scores([(strict, loose)])
            return {"score": parts["final"], "strict": strict, "loose": loose}
        if subset == "advbench":
            return {"score": float(official.refuses(prediction))}
        if subset in ("openbookqa", "mmsu"):
            got, truth = official.extract_mcq(prediction), str(ref["reference"])
            guess = got or official.fallback("ABCD", self.seed, item.id)
        else:
            got, truth = official.extract_bbh(prediction, str(ref["id"])), official.bbh_reference(ref["reference"])
            guess = got if got is not None else official.fallback((0, 1), self.seed, item.id)
        return {"score": float(guess == truth), "extracted": got, "guessed": guess, "fail": float(got is None),
                "acc_no_guess": float(got is not None and got == truth)}

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """Per-subset official scores (ifeval's from pooled verdicts); overall = mean of the subset scores."""
        out = super().aggregate(records)
        subsets = sorted({r["slices"]["subset"] for r in records})
        for s in subsets:
            mine = [r for r in records if r["slices"]["subset"] == s]
            if s == "ifeval":
                parts = official.ifeval_scores([(r["strict"], r["loose"]) for r in mine])
                out |= {"ifeval/score": parts.pop("final"), **{f"ifeval/{k}": v for k, v in parts.items()}}
            if "fail" in mine[0]:
                out[f"{s}/extraction_fail_rate"] = scorers.mean([r["fail"] for r in mine])
                out[f"{s}/acc_no_guess"] = scorers.mean([r["acc_no_guess"] for r in mine])
        out["score"] = scorers.mean([out[f"{s}/score"] for s in subsets])
        return out
