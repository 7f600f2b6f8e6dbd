"""Dynamic-SUPERB per-instance metrics, dispatched by the metric each task file declares (task "dynamic_superb").

What is matched, and against what (docs/evaluation.md, section Dynamic-SUPERB, says what is NOT verified):
- the task file: each instance's `instance.json` {name, description, keywords, metrics: [...], path: "DynamicSuperb/
  <Instance>", version: <HF revision>} as in dynamic-superb/dynamic-superb's `dynamic_superb/benchmark_tasks/<Task>/
  <Instance>/instance.json` (read from a copy of two released files; the repository itself could not be fetched);
- `accuracy`: the repository's `api/metrics/accuracy.py` rule as described by a digest of that repository: the answer
  is right only when it equals the label ignoring case (no stripping, no partial credit);
- `wer` / `cer` / `per`: word / character / phone error rate of the instance (jiwer, corpus-level, no normalisation);
- `llm_classification`: an LLM judge compares answer and label. The Phase-2 judge prompt is NOT public here, so the
  prompt below is the project's (verdicts are not comparable with the leaderboard); an unparsable verdict is wrong.
A metric outside METRICS fails before any model is loaded, naming the instance.json and the supported names.
"""

from __future__ import annotations

from collections.abc import Sequence

from desta.evaluate.scorers import parse_judgement

ERROR_RATES = ("wer", "cer", "per")
METRICS = ("accuracy", "llm_classification", *ERROR_RATES)
LOWER_IS_BETTER = frozenset(ERROR_RATES)

JUDGE_SYSTEM = (  # the project's prompt (the official Phase-2 one could not be obtained)
    "You are a strict grader. You get a task instruction, the reference answer and a model's response. Decide "
    "whether the response gives the same answer as the reference (ignore wording and formatting). Reply with one "
    "line 'Explanation: <short reason>' and then one line 'Judgement: correct' or 'Judgement: incorrect'.")


def exact_match(prediction: str, label: str) -> bool:
    """Phase-1 `accuracy`: equal after lower-casing both, nothing else ("Sad." is not "sad")."""
    return prediction.lower() == label.lower()


def judge_prompt(instruction: str, label: str, response: str) -> tuple[str, str]:
    return JUDGE_SYSTEM, f"Instruction: {instruction}\nReference answer: {label}\nModel response: {response}"


def judge_verdict(reply: str) -> bool:
    """True only for a parsable "correct" verdict (unparsable counts as wrong, inside the denominator)."""
    return parse_judgement(reply) is True


def error_rate(metric: str, labels: Sequence[str], predictions: Sequence[str]) -> float:
    """Corpus-level WER (words), CER (characters) or PER (space-separated phones, i.e. WER on phone strings)."""
    import jiwer

    if metric not in ERROR_RATES:
        raise ValueError(f"error_rate: {metric!r} is not one of {ERROR_RATES}")
    if not labels or any(not str(x).strip() for x in labels):
        raise ValueError(f"{metric}: every label must be non-empty")
    fn = jiwer.cer if metric == "cer" else jiwer.wer
    return float(fn([str(x) for x in labels], [str(p) for p in predictions]))
