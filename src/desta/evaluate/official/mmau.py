"""MMAU scoring as published (`desta evaluate`, task "mmau"): MMAU's matching rule after DeSTA2.5's answer handling.

Matched against Sakshi113/MMAU @ 110127f (`evaluation.py`: `string_match`, task / difficulty / sub-category /
total accuracy, an item without a prediction is skipped) and kehanlu/DeSTA2.5-Audio @ 5503dfc
(examples/evaluation/MMAU-v05.15.25: the model is asked for `The correct answer is: "___"`, every exact occurrence
of the phrase `The correct answer is: ` is deleted from the raw output, the rest is stripped and matched).
Parity: tests/unit/test_parity_mmau.py reproduces the released test-mini outputs (sound 70.57, music 56.29,
speech 71.17) item by item.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from desta.evaluate.scorers import mmau_string_match

PREFIX = "The correct answer is: "  # exact, case-sensitive, with its trailing space (DeSTA2.5's MMAU script)
GROUPS = (("task", "task"), ("difficulty", "difficulty"), ("sub-category", "sub_category"))


def desta_prediction(model_output: str) -> str:
    """DeSTA2.5's `model_prediction`: the raw output with every exact `The correct answer is: ` removed, stripped.

    Only the exact phrase goes: reasoning written before it stays in the prediction, so a choice word named in the
    reasoning can make a right final answer wrong (the published numbers include that; see `answer_span`)."""
    return model_output.replace(PREFIX, "").strip()


def answer_span(model_output: str) -> str:
    """The text after the last `The correct answer is:` (any case), quotes and a final period removed; the whole
    output when the phrase is absent. Not official: the `answer_span_accuracy` variant reported beside it."""
    low, key = model_output.lower(), PREFIX.strip().lower()
    idx = low.rfind(key)
    text = model_output[idx + len(key):] if idx >= 0 else model_output
    return text.strip().rstrip(".").strip().strip('"').strip()


def verdict(answer: str, choices: Sequence[str], model_output: str) -> bool:
    """The published verdict of one item: MMAU's `string_match` on DeSTA2.5's prediction."""
    return mmau_string_match(answer, desta_prediction(model_output), list(choices))


def accuracy_table(rows: Iterable[dict[str, Any]], output_key: str = "model_output") -> dict[str, float]:
    """MMAU's report on released-format rows ({answer, choices, task, difficulty, sub-category, <output_key>}):
    accuracy in percent, rounded to 2 decimals as `evaluation.py` prints it, under `total`, `task/<t>`,
    `difficulty/<d>` and `sub_category/<s>`. Rows without `output_key` are skipped, as the official script does."""
    hits: dict[str, list[int]] = {}
    for row in rows:
        if output_key not in row:
            continue
        ok = int(verdict(row["answer"], row["choices"], row[output_key]))
        keys = ["total"] + [f"{name}/{row[field]}" for field, name in GROUPS if row.get(field) is not None]
        for key in keys:
            hits.setdefault(key, [0, 0])
            hits[key][0] += ok
            hits[key][1] += 1
    return {k: round(100 * c / n, 2) for k, (c, n) in sorted(hits.items())}
