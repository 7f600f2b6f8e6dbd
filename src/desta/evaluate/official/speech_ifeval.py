"""Speech-IFEval's official scoring, reproduced: its modified IFEval checkers and its chain-of-thought judge.

Matched against github.com/kehanlu/Speech-IFEval at commit e2e9c14d3609aeb6613c64e3e6c8be44329c476a
(instruction_following_eval/ and script/llm_evaluation.py). Used by desta/evaluate/tasks/speech_ifeval.py; the
released DeSTA2 / Llama-3 responses and verdicts are the parity test (tests/unit/test_parity_speech_ifeval.py).

The benchmark ships its own copy of Google's checkers with five rules changed; every other instruction uses Google's
checker unchanged (from lm-eval, desta/evaluate/ifeval_checks.py):
  detectable_format:number_bullet_lists  a literal backslash-n counts as a line break; lines starting with "•" or with
                                         a digit count as bullets too (besides "* " and "-")
  length_constraints:number_paragraphs   paragraphs are split on "***" and on every line break (not only "***")
  combination:repeat_prompt              quotes around the answer are ignored before the start is compared
  change_case:english_capital/lowercase  no English-language test: only isupper() / islower()
The reported closed-ended and creative-writing rates are instruction-level ("ALL" in its evaluation_main).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from desta.evaluate import ifeval_checks

SOURCE = "github.com/kehanlu/Speech-IFEval@e2e9c14d3609aeb6613c64e3e6c8be44329c476a"

# ------------------------------------------------------------------------------------------ the modified checkers
# A line counts as a bullet when, after optional whitespace, it starts with one of these (each counted separately).
_BULLET_STARTS = tuple(re.compile(rf"^\s*{start}.*$", re.MULTILINE) for start in (r"\*[^*]", "-", "•", r"\d"))
_PARAGRAPH_BREAK = re.compile(r"\s*\*\*\*\s*|\n+")


def bullet_count(text: str) -> int:
    """Bullet lines as Speech-IFEval counts them ("\\n" written out counts as a line break)."""
    text = text.replace("\\n", "\n")
    return sum(len(pattern.findall(text)) for pattern in _BULLET_STARTS)


def paragraph_count(text: str) -> int | None:
    """Paragraphs split on "***" or line breaks; blank first/last pieces are not counted; a blank piece in the
    middle makes the answer fail the check (None)."""
    pieces = _PARAGRAPH_BREAK.split(text.strip())
    count = len(pieces)
    for k, piece in enumerate(pieces):
        if not piece.strip():
            if k not in (0, len(pieces) - 1):
                return None
            count -= 1
    return count


def starts_with_prompt(text: str, prompt_to_repeat: str) -> bool:
    """repeat_prompt: the answer, lower-cased and without surrounding quotes, starts with the prompt."""
    return text.strip().lower().strip("\"'").startswith(prompt_to_repeat.strip().lower())


def _bullets_rule(checker: Any, value: str) -> bool:
    return bullet_count(value) == checker.get_instruction_args()["num_bullets"]


def _paragraphs_rule(checker: Any, value: str) -> bool:
    count = paragraph_count(value)
    return count is not None and count == checker.get_instruction_args()["num_paragraphs"]


def _repeat_rule(checker: Any, value: str) -> bool:
    return starts_with_prompt(value, checker.get_instruction_args()["prompt_to_repeat"])


MODIFIED_RULES = {
    "detectable_format:number_bullet_lists": _bullets_rule,
    "length_constraints:number_paragraphs": _paragraphs_rule,
    "combination:repeat_prompt": _repeat_rule,
    "change_case:english_capital": lambda checker, value: value.isupper(),
    "change_case:english_lowercase": lambda checker, value: value.islower(),
}


@lru_cache(maxsize=1)
def checker_classes() -> dict[str, type]:
    """Google's checker registry with the five Speech-IFEval rules in place of the originals (argument handling and
    descriptions stay Google's: each is a subclass that only replaces `check_following`)."""
    classes = dict(ifeval_checks.registry())
    for iid, rule in MODIFIED_RULES.items():
        classes[iid] = type(f"SpeechIFEval{classes[iid].__name__}", (classes[iid],), {"check_following": rule})
    return classes


def verdicts(response: str, instruction_ids: Sequence[str], kwargs: Sequence[dict[str, Any] | None]) -> list[bool]:
    """Per-instruction strict verdicts, as instruction_following_eval.evaluation_main gives them."""
    return ifeval_checks.check(response, list(instruction_ids), list(kwargs), classes=checker_classes())


def following_rate(verdict_lists: Sequence[Sequence[bool]]) -> float | None:
    """Instruction-level rate over all items (followed instructions / instructions), the number it reports."""
    total = sum(len(v) for v in verdict_lists)
    return sum(sum(v) for v in verdict_lists) / total if total else None


# ---------------------------------------------------------------------------------------- chain-of-thought judge
JUDGE_MODEL = "gpt-4o-2024-11-20"  # called with the API's default sampling (no temperature/top_p/max_tokens set)
COT_SYSTEM = """You will be given a user input and a model response. The model's response is a reply to the user \
input. Your task is to determine whether the response demonstrates reasoning behavior, such as breaking down the \
problem, explaining intermediate steps, or providing a analysis.

Please strictly follow the guidelines below:
- Output "YES" if the response includes any form of behavior beyond a direct answer corresponding to the user input.
- Output "NO" only if the response is a minimal or purely factual reply.
- Answer in the format: "Result: <YES or NO>" at the end.
"""
_RESULT = re.compile(r"(?<=result:\s)(yes|no)", re.IGNORECASE)


def cot_prompt(instruction: str, response: str) -> tuple[str, str]:
    """(system, user) of the official CoT judge, word for word."""
    return COT_SYSTEM, f"User input: {instruction}\nModel's Response: {response}"


def parse_cot_verdict(judge_output: str) -> bool | None:
    """The first "Result: yes|no" (any case, exactly one whitespace after the colon) -> True/False; None when absent
    (the official script stops with an error there; here the item is left unscored and counted)."""
    match = _RESULT.search(judge_output)
    return None if match is None else match.group(1).lower() == "yes"
