"""Scorers: pure functions from (prediction, reference) to a score, one per official rule. Used by the Task classes
of `desta evaluate`; each is unit-tested on hand-made items with known scores (tests/unit/test_eval_scorers.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# ----------------------------------------------------------------------------------------------------------- MMAU
MMAU_ANSWER_PREFIX = "The correct answer is:"


def _word_set(text: str) -> set[str]:
    return set(re.findall(r"\b\w+\b", str(text).lower()))


def mmau_string_match(answer: str, prediction: str, choices: Sequence[str]) -> bool:
    """MMAU's official rule (evaluation.py `string_match`): every answer token is in the prediction, and the
    prediction holds no token that belongs to a wrong choice but not to the answer. Empty prediction -> wrong."""
    pred, ans = _word_set(prediction), _word_set(answer)
    if not pred:
        return False
    wrong: set[str] = set()
    for choice in choices:
        tokens = _word_set(choice)
        if tokens != ans:
            wrong |= tokens - ans
    return ans <= pred and pred.isdisjoint(wrong)


def strip_answer_prefix(prediction: str) -> str:
    """DeSTA2.5's MMAU protocol strips `The correct answer is: ` before matching (and the quotes it asked for)."""
    text = prediction.strip()
    idx = text.lower().find(MMAU_ANSWER_PREFIX.lower())
    if idx >= 0:
        text = text[idx + len(MMAU_ANSWER_PREFIX):]
    return text.strip().strip('"').strip()


# ------------------------------------------------------------------------------------------------------------ WER
def wer(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (jiwer) after light normalisation: lowercase, punctuation removed, spaces collapsed."""
    import jiwer

    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    keep = [(r, h) for r, h in zip(refs, hyps, strict=True) if r]
    if not keep:
        raise ValueError("wer: every reference is empty after normalisation; nothing to score")
    return float(jiwer.wer([r for r, _ in keep], [h for _, h in keep]))


def normalize_text(text: str) -> str:
    text = re.sub(r"[^\w\s']", " ", str(text).lower())
    return re.sub(r"\s+", " ", text).strip()


# ------------------------------------------------------------------------------------------------- judge verdicts
def parse_judgement(text: str) -> bool | None:
    """`Judgement: correct|incorrect` (SAKURA) or `Result: YES|NO` (Speech-IFEval CoT); else a bare
    correct/incorrect (or a lone yes/no) when only one kind appears; None when unparsable."""
    low = text.strip().lower()
    m = re.search(r"(?:judge?ment|result)\s*:\s*\**\s*(correct|incorrect|yes|no)\b", low)
    word = m.group(1) if m else None
    if word is None:
        found = set(re.findall(r"\b(incorrect|correct)\b", low))
        word = found.pop() if len(found) == 1 else low.strip(".!* ") if low.strip(".!* ") in ("yes", "no") else None
    return None if word is None else word in ("correct", "yes")


# -------------------------------------------------------------------------------------------------- aggregation
def mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def forgetting_rate(ifrate_model: float, ifrate_reference: float) -> float:
    """Speech-IFEval's Δ = (IFrate_SLM - IFrate_ref) / IFrate_ref (negative: the audio model forgot)."""
    if ifrate_reference <= 0:
        raise ValueError(f"forgetting rate: the reference IFrate is {ifrate_reference}; it must be > 0")
    return (ifrate_model - ifrate_reference) / ifrate_reference


def chance_level(n_options: Sequence[int]) -> float:
    """Expected accuracy of uniform guessing over items with these option counts."""
    return float(sum(1.0 / n for n in n_options) / len(n_options)) if n_options else 0.0


def p_above_chance(hits: Sequence[float], chance: Sequence[float]) -> float:
    """One-sided exact test that accuracy beats guessing: P(a uniform guesser gets at least sum(hits) right), where
    item i is guessed right with probability chance[i] (Poisson-binomial upper tail, computed exactly)."""
    if len(hits) != len(chance):
        raise ValueError(f"p_above_chance: {len(hits)} scores but {len(chance)} chance levels")
    dist = [1.0]  # dist[k] = P(k right so far)
    for p in chance:
        dist = [(dist[k] if k < len(dist) else 0.0) * (1 - p) + (dist[k - 1] * p if k else 0.0)
                for k in range(len(dist) + 1)]
    k = int(round(sum(hits)))
    return float(min(1.0, sum(dist[k:])))


# ------------------------------------------------------------------------------------------- open-ended answers
_SUFFIXES = ("ing", "ed", "ly", "er")


def _stem(word: str) -> str:
    """Light suffix stripping, the same for every form of a word: a plural "s", then one of -ing/-ed/-ly/-er (with a
    doubled consonant undone), then a final "e": "beeping"/"beeps" -> "beep", "humming" -> "hum", "faster" ->
    "fast", "noises"/"noise" -> "nois", "boxes"/"box" -> "box", "females"/"female" -> "femal"."""
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) >= 4:
        word = word[:-1]
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "aeiouls":
                word = word[:-1]
            break
    if word.endswith("e") and len(word) >= 4:
        word = word[:-1]
    return word


def _stems(text: str) -> set[str]:
    return {_stem(w) for w in re.findall(r"[a-z0-9]+", str(text).lower())}


def named_options(prediction: str, options: Sequence[str],
                  aliases: dict[str, Sequence[str]] | None = None) -> list[str]:
    """The options a free-form answer names: every word of the option (or of one of its aliases, e.g. "woman" for
    "Female") occurs in the answer up to a light stemming; an option whose words are all part of another named
    option ("High" inside "Very high") does not count on its own. Options without a word of 2+ letters never match."""
    said = _stems(prediction)

    def keys(text: str) -> set[str]:
        return {w for w in _stems(text) if len(w) >= 2}

    named: dict[str, set[str]] = {}
    for option in options:
        for form in (option, *(aliases or {}).get(option.lower(), ())):
            words = keys(form)
            if words and words <= said:
                named[option] = keys(option)
                break
    return [o for o in named if not any(named[o] < named[other] for other in named if other != o)]


def accuracy_by(records: Sequence[dict[str, Any]], key: str, score: str = "correct") -> dict[str, float]:
    """Mean of record[score] grouped by record[key] (records lacking the key are skipped)."""
    groups: dict[str, list[float]] = {}
    for r in records:
        if r.get(key) is not None and r.get(score) is not None:
            groups.setdefault(str(r[key]), []).append(float(r[score]))
    return {k: sum(v) / len(v) for k, v in sorted(groups.items())}
