"""The instruction pool (data/prompts.jsonl, built by build_pool.py) and deterministic per-clip prompt sampling.

Used by `desta generate`. `sample_prompts(clip, k, seed)` depends only on (seed, clip id, pool), so the prompts a clip
gets are the same whatever the order, sharding or worker count of the run. Every sample keeps its prompt id.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path

from desta.data.manifest import DOMAINS, Clip
from desta.selfgen.build_pool import POOL_PATH
from desta.selfgen.describe import has_speech_text

NEEDS_SPEECH_TEXT = {"transcription"}  # categories that only make sense when the clip has words
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


def applicable(pool: PromptPool, clip: Clip) -> dict[str, list[Prompt]]:
    """Prompts usable for this clip, by category: its domain's prompts, minus transcription when it has no words and
    minus prompts about attributes the clip is not labelled with (categories left empty are dropped)."""
    cats = pool.by_category(clip.domain)
    if not has_speech_text(clip):
        cats = {c: ps for c, ps in cats.items() if c not in NEEDS_SPEECH_TEXT}
    cats = {c: [p for p in ps if all(labelled(getattr(clip, f)) for f in p.requires)] for c, ps in cats.items()}
    return {c: ps for c, ps in cats.items() if ps}


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


def check_category_weights(pool: PromptPool, weights: dict[str, float] | None) -> None:
    """Every weighted category must exist in the pool (a typo would silently weigh nothing)."""
    unknown = sorted(set(weights or {}) - set(pool.categories))
    if unknown:
        raise ValueError(f"params.yaml generate.category_weights: unknown categor{'y' if len(unknown) == 1 else 'ies'} "
                         f"{', '.join(unknown)}; the pool has {', '.join(pool.categories)}")


def _weighted_sample(rng: random.Random, names: list[str], k: int, weights: dict[str, float]) -> list[str]:
    """k distinct names, each draw proportional to its weight among those left (Efraimidis-Spirakis keys);
    names without a weight count 1."""
    keys = sorted(names, key=lambda n: rng.random() ** (1.0 / weights.get(n, 1.0)), reverse=True)
    return keys[:k]


def sample_prompts(pool: PromptPool, clip: Clip, k: int, seed: int,
                   category_weights: dict[str, float] | None = None) -> list[Prompt]:
    """k distinct prompts for a clip: k distinct categories first (uniform, or proportional to
    `category_weights`), then one prompt in each.

    When k exceeds the number of categories the remaining prompts are drawn from all applicable ones. Deterministic
    in (seed, clip.id, pool, weights): the RNG is seeded from a string, which Python hashes with SHA-512 (stable).
    """
    cats = applicable(pool, clip)
    if not cats:
        raise ValueError(f"clip {clip.id}: no prompt in the pool applies to domain {clip.domain!r}")
    rng = random.Random(f"desta-prompts:{seed}:{clip.id}")
    if category_weights:
        chosen_cats = _weighted_sample(rng, sorted(cats), min(k, len(cats)), category_weights)
    else:
        chosen_cats = rng.sample(sorted(cats), min(k, len(cats)))
    picked = [rng.choice(cats[c]) for c in chosen_cats]
    rest = [p for c in sorted(cats) for p in cats[c] if p not in picked]
    picked += rng.sample(rest, min(k - len(picked), len(rest)))
    return picked
