"""The instruction pool (size, shape, in sync with its templates) and deterministic per-clip sampling."""

from collections import Counter

import pytest

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
                                    "creative", "format", "labels"}
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


def test_category_weights_shift_the_mix_and_unknown_categories_fail():
    from desta.selfgen.prompts import check_category_weights

    pool = load_pool()
    uniform = Counter(p.category for i in range(300) for p in sample_prompts(pool, _clip(i), 2, 0))
    weights = {"paralinguistic": 6.0, "transcription": 6.0}
    weighted = Counter(p.category for i in range(300) for p in sample_prompts(pool, _clip(i), 2, 0, weights))
    assert weighted["paralinguistic"] > 2 * uniform["paralinguistic"]
    assert sum(weighted.values()) == sum(uniform.values()) == 600
    assert sample_prompts(pool, _clip(3), 2, 0, weights) == sample_prompts(pool, _clip(3), 2, 0, dict(weights))
    assert sample_prompts(pool, _clip(3), 2, 0, {}) == sample_prompts(pool, _clip(3), 2, 0)  # {} = uniform
    with pytest.raises(ValueError, match="generate.category_weights: unknown category paralingustic"):
        check_category_weights(pool, {"paralingustic": 2.0})


def test_label_prompts_only_for_clips_labelled_with_what_they_ask(tmp_path):
    from desta.selfgen.prompts import applicable

    pool = load_pool()
    labelled = Clip(id="c/g", audio="a.wav", duration=1.0, sample_rate=16000, channels=1, source="c",
                    domain="speech", transcript="hi", gender="Female", accent="British")
    asks = {p.text for p in applicable(pool, labelled)["labels"]}
    assert "What is the speaker's gender? Answer in a few words." in asks
    assert "What is the speaker's gender and accent? Answer briefly." in asks
    assert not any("pitch" in t or "background" in t for t in asks)  # needs pitch / background labels
    assert "labels" not in applicable(pool, _clip(0))  # no labels at all: the category is not offered
    music = Clip(id="c/m", audio="a.wav", duration=1.0, sample_rate=16000, channels=1, source="c", domain="music",
                 music_instrument="piano", music_mode="minor")
    assert all(set(p.requires) <= {"music_instrument", "music_mode"} for p in applicable(pool, music)["labels"])
    bad = tmp_path / "pool.jsonl"
    bad.write_text('{"id": "p1", "category": "labels", "domains": ["speech"], "text": "Age?", "requires": ["agee"]}\n')
    with pytest.raises(ValueError, match=r"pool.jsonl:1: prompt p1: requires unknown clip field\(s\) \['agee'\]"):
        load_pool(bad)
