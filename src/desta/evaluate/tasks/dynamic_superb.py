"""Dynamic-SUPERB task instances from their released files, each scored by its own metric (task "dynamic_superb").

Layout (docs/evaluation.md): <benchmarks_root>/dynamic_superb/tasks/ holds the task files (a copy of
dynamic-superb/dynamic-superb's `dynamic_superb/benchmark_tasks/`, i.e. <Task>/<Instance>/instance.json) and
<benchmarks_root>/dynamic_superb/data/<Instance>/ the instance's HF dataset as `hf download DynamicSuperb/<Instance>
--repo-type dataset --local-dir ...` writes it (data/test-*.parquet: `file`, `audio` {bytes, path} [+ `audio2`, ...],
`instruction`, `label`). The metric of each instance is the first entry of its instance.json `metrics`
(official/dynamic_superb.py). Prompt: the model's one inference layout (desta.conversation: system "Focus on the
audio clips and instructions.", user one `<|AUDIO|>` per clip, a blank line, the instruction). Reported per instance
`<Instance>/<metric>`, and the mean accuracy over the accuracy-scored instances (`macro_accuracy`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from desta.conversation import inference_messages
from desta.evaluate import scorers
from desta.evaluate.judge import JudgeFn
from desta.evaluate.loop import Item, Task
from desta.evaluate.official import dynamic_superb as official
from desta.evaluate.tasks.common import DESTA_SYSTEM, BenchmarkFilesError, check_fields, require
from desta.evaluate.tasks.voicebench import decode_audio

HOW = ("Copy dynamic_superb/benchmark_tasks/ of github.com/dynamic-superb/dynamic-superb into "
       "<benchmarks_root>/dynamic_superb/tasks/, and download each instance with `hf download DynamicSuperb/<Instance> "
       "--repo-type dataset --local-dir <benchmarks_root>/dynamic_superb/data/<Instance>`")
_AUDIO_COLUMN = re.compile(r"audio(\d*)")


def read_instances(root: Path, names: list[str] | None) -> dict[str, dict[str, Any]]:
    """Instance name -> its instance.json (with `_file`), for every task file under root/tasks (or only `names`)."""
    files = sorted(require(root / "tasks", "Dynamic-SUPERB", HOW).rglob("instance.json"))
    found: dict[str, dict[str, Any]] = {}
    for f in files:
        try:
            info = json.loads(f.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise BenchmarkFilesError(f"{f}: not valid JSON ({err.msg}); use the released task file") from None
        check_fields(info, ("name", "metrics", "path"), str(f))
        found[info["name"]] = {**info, "_file": str(f)}
    if names:
        missing = [n for n in names if n not in found]
        if missing:
            raise BenchmarkFilesError(f"{root / 'tasks'}: no instance.json named {missing}. {HOW}")
        found = {n: found[n] for n in names}
    if not found:
        raise BenchmarkFilesError(f"{root / 'tasks'}: no instance.json files. {HOW}")
    for info in found.values():
        metric = (info["metrics"] or [None])[0]
        if metric not in official.METRICS:
            raise BenchmarkFilesError(f"{info['_file']}: metrics[0] is {metric!r}; supported: "
                                      f"{', '.join(official.METRICS)}. Leave the instance out of "
                                      "params.evaluate.dynamic_superb_tasks")
    return found


def audio_columns(row: dict[str, Any]) -> list[str]:
    """`audio` / `audio1`, then `audio2`, `audio3`, ... in order (pairwise and multi-clip instances)."""
    keys = [k for k in row if _AUDIO_COLUMN.fullmatch(k) and row[k] is not None]
    return sorted(keys, key=lambda k: int(_AUDIO_COLUMN.fullmatch(k).group(1) or 1))


class DynamicSuperbTask(Task):
    name = "dynamic_superb"
    group_key = "instance"

    def __init__(self, root: str | Path, judge: JudgeFn | None, instances: list[str] | None = None):
        self.root, self.judge, self.instances = Path(root) / "dynamic_superb", judge, instances
        self.metric: dict[str, str] = {}

    def items(self) -> list[Item]:
        items: list[Item] = []
        for name, info in read_instances(self.root, self.instances).items():
            self.metric[name] = info["metrics"][0]
            items += self._instance_items(name)
        return items

    def _instance_items(self, name: str) -> list[Item]:
        import pyarrow.parquet as pq

        files = sorted((self.root / "data" / name).rglob("*.parquet"))
        if not files:
            raise BenchmarkFilesError(f"{self.root / 'data' / name}: no *.parquet files. {HOW}")
        items = []
        for f in files:
            for n, r in enumerate(pq.read_table(f).to_pylist()):
                check_fields(r, ("instruction", "label"), f"{f} row {n}")
                audios = [{"audio": None, "text": None, "array": decode_audio(r[k], f"{f} row {n} column {k}")}
                          for k in audio_columns(r)]
                if not audios:
                    raise BenchmarkFilesError(f"{f} row {n}: no `audio` column; use the released Parquet files")
                conv = inference_messages(str(r["instruction"]), audios, DESTA_SYSTEM)
                items.append(Item(f"{name}/{r.get('file', n)}", conv,
                                  {"instruction": r["instruction"], "label": str(r["label"])}, {"instance": name}))
        return items

    def score_batch(self, items: list[Item], predictions: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = [{} for _ in items]
        judged = [k for k, i in enumerate(items) if self.metric[i.slices["instance"]] == "llm_classification"]
        if judged and self.judge is None:
            raise ValueError("dynamic_superb: llm_classification instances need a judge (params.evaluate.judge)")
        replies = self.judge([official.judge_prompt(items[k].reference["instruction"], items[k].reference["label"],
                                                    predictions[k]) for k in judged]) if judged else []
        for k, reply in zip(judged, replies, strict=True):
            out[k] = {"correct": float(official.judge_verdict(reply)), "judge": reply}
        for k, (item, pred) in enumerate(zip(items, predictions, strict=True)):
            if self.metric[item.slices["instance"]] == "accuracy":
                out[k] = {"correct": float(official.exact_match(pred, item.reference["label"]))}
        return out

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        out: dict[str, float] = {"n_items": float(len(records))}
        by_instance: dict[str, list[dict[str, Any]]] = {}
        for r in records:
            by_instance.setdefault(r["slices"]["instance"], []).append(r)
        accuracies = []
        for name, recs in sorted(by_instance.items()):
            metric = self.metric[name]
            if metric in official.ERROR_RATES:
                out[f"{name}/{metric}"] = official.error_rate(metric, [r["reference"]["label"] for r in recs],
                                                              [r["prediction"] for r in recs])
            else:
                out[f"{name}/accuracy"] = scorers.mean([r["correct"] for r in recs])
                accuracies.append(out[f"{name}/accuracy"])
        if accuracies:
            out["macro_accuracy"] = scorers.mean(accuracies)
        out["judge_unparsed"] = float(sum(1 for r in records if "judge" in r
                                          and scorers.parse_judgement(r["judge"]) is None))
        return out
