"""The one generic evaluation loop: a Task yields Items, generators answer them in batches, the Task scores them.

Run by `desta evaluate` (desta/evaluate/run.py) for every task in params.evaluate.tasks. A generator is any
callable `generate_fn(list of conversations) -> list[str]`: the audio LLM, the text-only backbone, or (in tests) a
deterministic function. Items name the generator they need (`runner`: "model" or "backbone"), so one task can
compare the audio model with its own backbone (Speech-IFEval's forgetting rate, the language-retention check).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from desta.evaluate import scorers

log = logging.getLogger(__name__)

GenerateFn = Callable[[list[list[dict[str, Any]]]], list[str]]
# conversations, option lists -> per conversation the picked option index, or {method: index} when the chooser ranks
# the options in several ways ("choice": likelihood, "calibrated_choice": likelihood minus the audio-free likelihood)
ChoiceFn = Callable[[list[list[dict[str, Any]]], list[list[str]]], list[int | dict[str, int]]]
Conversation = list[dict[str, Any]]


@dataclass
class Item:
    """One question. `conversation` is DeSTA's message list ({role, content, audios: [{audio, text}]});
    `reference` holds what scoring needs; `slices` the groups it is reported under (domain, attribute, ...)."""

    id: str
    conversation: Conversation
    reference: dict[str, Any] = field(default_factory=dict)
    slices: dict[str, str] = field(default_factory=dict)
    runner: str = "model"


class Task:
    """One benchmark: build items, score one answer, aggregate the scored records.

    `primary` is the per-item score averaged overall and per slice (e.g. "correct" -> accuracy); `group_key` is the
    slice reported as `<task>/<value>/<metric>` (e.g. heldout/gender/accuracy); other slices as
    `<task>/by_<key>/<value>/<metric>`."""

    name: str = "task"
    primary: str = "correct"
    metric_name: str = "accuracy"
    group_key: str | None = None
    choice_scoring: bool = False  # multiple-choice items also answered by option likelihood (run_task choosers)

    def check_files(self) -> None:
        """Raise (naming the file, the field and the fix) if the task's input files are missing or malformed; run for
        every task before any model loads. Default: nothing to check."""

    def items(self) -> list[Item]:
        raise NotImplementedError

    def score(self, item: Item, prediction: str) -> dict[str, Any]:
        raise NotImplementedError

    def score_batch(self, items: Sequence[Item], predictions: Sequence[str]) -> list[dict[str, Any]]:
        """Override to batch expensive scoring (an LLM judge); default: `score` per item."""
        return [self.score(i, p) for i, p in zip(items, predictions, strict=True)]

    def aggregate(self, records: list[dict[str, Any]]) -> dict[str, float]:
        """Task-level metrics without the task prefix; default: mean of `primary` overall and per slice."""
        return slice_metrics(records, self.primary, self.metric_name, self.group_key)


def slice_metrics(records: list[dict[str, Any]], primary: str, metric: str, group_key: str | None) -> dict[str, float]:
    scored = [r for r in records if r.get(primary) is not None]
    out: dict[str, float] = {}
    if scored:
        out[metric] = scorers.mean([float(r[primary]) for r in scored])
        out["n_items"] = float(len(scored))
    keys = sorted({k for r in scored for k in r.get("slices", {})})
    for key in keys:
        groups: dict[str, list[float]] = {}
        for r in scored:
            if key in r.get("slices", {}):
                groups.setdefault(r["slices"][key], []).append(float(r[primary]))
        for raw, vals in sorted(groups.items()):
            value = re.sub(r"[^\w\-. :]", "_", raw)  # metric names valid in MLflow; "/" only between levels
            name = f"{value}/{metric}" if key == group_key else f"by_{key}/{value}/{metric}"
            out[name] = sum(vals) / len(vals)
    return out


def generate_all(items: Sequence[Item], generators: dict[str, GenerateFn], batch_size: int) -> list[str]:
    """Answers in item order; each runner's items go through its generator in batches of similar length."""
    answers: list[str | None] = [None] * len(items)
    for runner in sorted({i.runner for i in items}):
        if runner not in generators:
            raise KeyError(f"items need the generator {runner!r} but only {sorted(generators)} were given; pass it "
                           "to run_task (run.py builds 'model' and 'backbone')")
        idx = [k for k, i in enumerate(items) if i.runner == runner]
        # similar prompt lengths share a batch: less padding
        idx.sort(key=lambda k: sum(len(m.get("content", "")) for m in items[k].conversation))
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            outs = generators[runner]([items[k].conversation for k in chunk])
            if len(outs) != len(chunk):
                raise ValueError(f"generator {runner!r} returned {len(outs)} answers for {len(chunk)} conversations")
            for k, text in zip(chunk, outs, strict=True):
                answers[k] = str(text)
    return [a if a is not None else "" for a in answers]


def choose_all(items: Sequence[Item], choosers: dict[str, ChoiceFn], batch_size: int) -> list[dict[str, Any]]:
    """Likelihood-ranked choice for multiple-choice items (reference has `choices` and `answer`) whose runner has a
    chooser: {"<method>": option, "<method>_correct": 0/1} per ranking method ("choice" when the chooser returns a
    bare index); {} for the other items."""
    out: list[dict[str, Any]] = [{} for _ in items]
    for runner, fn in choosers.items():
        idx = [k for k, i in enumerate(items) if i.runner == runner and "choices" in i.reference
               and "answer" in i.reference]
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            picks = fn([items[k].conversation for k in chunk], [list(items[k].reference["choices"]) for k in chunk])
            for k, pick in zip(chunk, picks, strict=True):
                ref = items[k].reference
                for method, index in (pick if isinstance(pick, dict) else {"choice": pick}).items():
                    choice = ref["choices"][index]
                    out[k] |= {method: choice, f"{method}_correct": float(choice == ref["answer"])}
    return out


def run_task(task: Task, generators: dict[str, GenerateFn], batch_size: int = 8,
             max_items: int | None = None, choosers: dict[str, ChoiceFn] | None = None
             ) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Evaluate one task -> (metrics prefixed with the task name, per-item records for predictions/<task>.jsonl).
    With `choosers`, multiple-choice items are also answered by likelihood ranking (records get `choice_correct`;
    tasks that report it aggregate it as `choice_accuracy`)."""
    items = task.items()
    if max_items is not None:
        items = items[:max_items]
    if not items:
        raise ValueError(f"task {task.name}: no items to evaluate (check its input files and params.evaluate)")
    t0 = time.perf_counter()
    predictions = generate_all(items, generators, batch_size)
    elapsed = time.perf_counter() - t0
    scores = task.score_batch(items, predictions)
    chosen = choose_all(items, (choosers or {}) if task.choice_scoring else {}, batch_size)
    records = [{"id": i.id, "runner": i.runner, "prediction": p, "reference": i.reference, "slices": i.slices, **s,
                **c} for i, p, s, c in zip(items, predictions, scores, chosen, strict=True)]
    metrics = {f"{task.name}/{k}": v for k, v in task.aggregate(records).items() if v is not None}
    log.info("%s: %d items in %.1fs (%.2f items/s)", task.name, len(items), elapsed, len(items) / max(elapsed, 1e-9))
    return metrics, records
