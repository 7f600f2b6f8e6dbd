"""Deterministic per-clip prompt sampling from the instruction pool (desta.prompt_pool; built by build_pool.py).

Used by `desta generate`. `sample_prompts(clip, k, seed)` depends only on (seed, clip id, pool), so the prompts a clip
gets are the same whatever the order, sharding or worker count of the run. Every sample keeps its prompt id.
"""

from __future__ import annotations

import random

from desta.data.manifest import Clip
from desta.describe import has_speech_text
from desta.prompt_pool import Prompt, PromptPool, labelled, load_pool  # noqa: F401 (load_pool: for generate)

NEEDS_SPEECH_TEXT = {"transcription"}  # categories that only make sense when the clip has words


def applicable(pool: PromptPool, clip: Clip) -> dict[str, list[Prompt]]:
    """Prompts usable for this clip, by category: its domain's prompts, minus transcription when it has no words and
    minus prompts about attributes the clip is not labelled with (categories left empty are dropped)."""
    cats = pool.by_category(clip.domain)
    if not has_speech_text(clip):
        cats = {c: ps for c, ps in cats.items() if c not in NEEDS_SPEECH_TEXT}
    cats = {c: [p for p in ps if all(labelled(getattr(clip, f)) for f in p.requires)] for c, ps in cats.items()}
    return {c: ps for c, ps in cats.items() if ps}


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
