"""The instruction pool: the prompts `desta generate` draws from (prompt_pool.jsonl beside this module, built by
`python -m desta.selfgen.build_pool`), read and checked here so that generate (sampling) and validate (category
coverage) share one definition. Each prompt has an id, a category, the domains it applies to and the clip fields it
requires (labelled-attribute questions).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from desta.data.manifest import DOMAINS, Clip

POOL_PATH = Path(__file__).with_name("prompt_pool.jsonl")
CLIP_FIELDS = frozenset(f.name for f in fields(Clip))


@dataclass(frozen=True)
class Prompt:
    id: str
    category: str
    domains: tuple[str, ...]
    text: str
    requires: tuple[str, ...] = ()  # Clip fields the clip must have (labelled-attribute questions)


@dataclass(frozen=True)
class PromptPool:
    prompts: tuple[Prompt, ...]
    version: str  # sha256 (12 hex) of the pool file: recorded with every generated set

    def by_category(self, domain: str) -> dict[str, list[Prompt]]:
        out: dict[str, list[Prompt]] = {}
        for p in self.prompts:
            if domain in p.domains:
                out.setdefault(p.category, []).append(p)
        return out

    @property
    def categories(self) -> list[str]:
        return sorted({p.category for p in self.prompts})


def _parse_line(path: Path, lineno: int, line: str) -> Prompt:
    try:
        row = json.loads(line)
        prompt = Prompt(str(row["id"]), str(row["category"]), tuple(row["domains"]), str(row["text"]).strip(),
                        tuple(row.get("requires", ())))
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}:{lineno}: bad prompt line ({err}); each line needs id, category, domains, "
                         f"text; rebuild with `python -m desta.selfgen.build_pool`") from None
    unknown = set(prompt.requires) - CLIP_FIELDS
    if unknown:
        raise ValueError(f"{path}:{lineno}: prompt {prompt.id}: requires unknown clip field(s) {sorted(unknown)}; "
                         f"use manifest fields such as gender, accent, sound_labels, music_instrument")
    bad = set(prompt.domains) - set(DOMAINS)
    if not prompt.text or not prompt.domains or bad:
        raise ValueError(f"{path}:{lineno}: prompt {prompt.id}: empty text/domains or unknown domain(s) {bad}; "
                         f"domains must be among {DOMAINS}")
    return prompt


@lru_cache(maxsize=4)
def load_pool(path: str | Path = POOL_PATH) -> PromptPool:
    """Read and check the pool: unique ids and texts, known domains. Cached per path."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt pool missing; rebuild with `python -m desta.selfgen.build_pool`")
    raw = path.read_bytes()
    prompts = [_parse_line(path, i, ln) for i, ln in enumerate(raw.decode().splitlines(), 1) if ln.strip()]
    for attr in ("id", "text"):
        values = [getattr(p, attr) for p in prompts]
        if len(set(values)) != len(values):
            raise ValueError(f"{path}: duplicate prompt {attr}s; rebuild with `python -m desta.selfgen.build_pool`")
    return PromptPool(tuple(prompts), hashlib.sha256(raw).hexdigest()[:12])


def labelled(value: object) -> bool:
    """A clip field that holds a label: not None, NaN, blank text or an empty list (manifest rows give arrays)."""
    if value is None:
        return False
    if isinstance(value, float):
        return value == value
    if isinstance(value, str):
        return bool(value.strip())
    try:
        return len(value) > 0  # type: ignore[arg-type]
    except TypeError:
        return True
