"""Google's IFEval instruction checkers, taken from the maintained copy packaged in `lm-eval` (lm_eval/tasks/ifeval).

Used by the Speech-IFEval, VoiceBench-ifeval and language-retention tasks of `desta evaluate`. Only the three
checker modules are imported (not lm_eval's task machinery, which needs `datasets`). Offline caveat: the
`number_sentences` checker wants NLTK's punkt model, which cannot be downloaded here; when punkt is absent the
checkers count sentences with the regex splitter shipped in the same module (`split_into_sentences`), which agrees
with punkt on ordinary prose. `punkt_available()` says which one is in use (it is logged in metrics).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from functools import lru_cache
from typing import Any

INSTALL_HINT = "pip install --no-deps lm-eval==0.4.13 && pip install langdetect immutabledict nltk"


def _punkt_present() -> bool:
    import nltk

    for name in ("tokenizers/punkt_tab", "tokenizers/punkt"):
        try:
            nltk.data.find(name)
            return True
        except LookupError:
            continue
    return False


@lru_cache(maxsize=1)
def registry() -> dict[str, Any]:
    """instruction id (e.g. "change_case:english_capital") -> checker class."""
    try:
        module = importlib.import_module("lm_eval.tasks.ifeval.instructions_registry")
    except ImportError:
        module = _import_checkers_only()
    return dict(module.INSTRUCTION_DICT)


def _import_checkers_only():
    """Import lm_eval/tasks/ifeval/*.py without running lm_eval/tasks/__init__.py (which imports `datasets`)."""
    try:
        import lm_eval
    except ImportError as err:
        raise ImportError(f"the IFEval checkers come from the `lm-eval` package; install: {INSTALL_HINT}") from err
    base = os.path.join(os.path.dirname(lm_eval.__file__), "tasks")
    for name, path in (("lm_eval.tasks", base), ("lm_eval.tasks.ifeval", os.path.join(base, "ifeval"))):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [path]
            sys.modules[name] = pkg
    saved = os.environ.get("LOCAL_RANK")
    os.environ["LOCAL_RANK"] = "-1"  # lm_eval downloads punkt on rank "0" at import; there is no network here
    try:
        util = importlib.import_module("lm_eval.tasks.ifeval.instructions_util")
    finally:
        if saved is None:
            os.environ.pop("LOCAL_RANK", None)
        else:
            os.environ["LOCAL_RANK"] = saved
    if not _punkt_present():
        util.count_sentences = lambda text: len(util.split_into_sentences(text))
    return importlib.import_module("lm_eval.tasks.ifeval.instructions_registry")


def punkt_available() -> bool:
    return _punkt_present()


def _loose_variants(response: str) -> list[str]:
    """IFEval's loose mode: also try without the first line, the last line, or both, and without asterisks."""
    lines = response.split("\n")
    first_removed = "\n".join(lines[1:]).strip()
    last_removed = "\n".join(lines[:-1]).strip()
    both_removed = "\n".join(lines[1:-1]).strip()
    variants = [response, first_removed, last_removed, both_removed]
    return variants + [v.replace("*", "") for v in variants]


def check(response: str, instruction_ids: list[str], kwargs: list[dict[str, Any]], prompt: str = "",
          loose: bool = False) -> list[bool]:
    """One boolean per instruction: does `response` follow it (strict, or loose with `loose=True`)?

    `kwargs[i]` holds the arguments of instruction i as released (None values are dropped, as IFEval does)."""
    if len(kwargs) != len(instruction_ids):
        raise ValueError(f"{len(instruction_ids)} instruction ids but {len(kwargs)} kwargs entries; the released "
                         "files pair them one to one (instruction_id_list / kwargs)")
    reg = registry()
    results = []
    for iid, kw in zip(instruction_ids, kwargs, strict=True):
        if iid not in reg:
            raise KeyError(f"unknown IFEval instruction id {iid!r}; known ids look like "
                           f"{', '.join(sorted(reg)[:3])}, ...")
        checker = reg[iid](iid)
        checker.build_description(**{k: v for k, v in (kw or {}).items() if v is not None})
        args = checker.get_instruction_args()
        if args and "prompt" in args:
            checker.build_description(prompt=prompt)
        candidates = _loose_variants(response) if loose else [response]
        results.append(any(c.strip() and checker.check_following(c) for c in candidates))
    return results
