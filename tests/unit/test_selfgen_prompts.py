"""The instruction pool (size, shape, in sync with its templates) and deterministic per-clip sampling."""

from collections import Counter

from desta.data.manifest import Clip
from desta.selfgen import build_pool
from desta.selfgen.prompts import load_pool, sample_prompts


def _clip(i: int, domain: str = "speech", transcript: str | None = "hi") -> Clip:
    return Clip(id=f"c/{i}", audio="a.wav", duration=1.0, sample_rate=16000, channels=1, source="c", domain=domain,
                transcript=transcript)


def test_pool_is_large_unique_and_covers_categories():
    pool = load_pool()
    assert len(pool.prompts) >= 500
    assert len({p.text for p in pool.prompts}) == len(pool.prompts)
    assert set(pool.categories) == {"description", "transcription", "paralinguistic", "sound", "music", "reasoning",
                                    "creative", "format"}
    assert all(p.id.startswith("p") for p in pool.prompts) and len(pool.version) == 12


def test_shipped_pool_matches_templates():
    assert build_pool.main(["--check"]) == 0


def test_sampling_is_deterministic_and_distinct():
    pool = load_pool()
    a = [sample_prompts(pool, _clip(i), 3, seed=7) for i in range(20)]
    b = [sample_prompts(pool, _clip(i), 3, seed=7) for i in reversed(range(20))][::-1]
    assert a == b
    assert all(len({p.id for p in ps}) == 3 for ps in a)
    seeds = {tuple(p.id for p in sample_prompts(pool, _clip(0), 3, seed=s)) for s in range(10)}
    assert len(seeds) > 1


def test_only_applicable_prompts_are_sampled():
    pool = load_pool()
    for domain in ("sound", "music"):
        picked = [p for i in range(60) for p in sample_prompts(pool, _clip(i, domain, None), 2, 0)]
        assert all(domain in p.domains for p in picked)
        assert not {"transcription", "paralinguistic"} & {p.category for p in picked}
    speechless = [p for i in range(60) for p in sample_prompts(pool, _clip(i, "speech", None), 2, 0)]
    assert "transcription" not in {p.category for p in speechless}


def test_categories_are_spread():
    pool = load_pool()
    counts = Counter(p.category for i in range(300) for p in sample_prompts(pool, _clip(i), 2, 0))
    assert set(counts) == {"description", "transcription", "paralinguistic", "reasoning", "creative", "format"}
    assert min(counts.values()) > 300 * 2 / 6 * 0.5
