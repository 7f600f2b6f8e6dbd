"""Attribute targets for `desta train` (train.attribute_targets): one short answer per train clip and attribute,
read from the manifest's metadata ("What is the speaker's gender?" -> "Female."), trained beside the
self-generated set. Not in the DeSTA2.5 recipe; docs/training.md ("Attribute targets") has the measurements that
put it in the CPU demo's default.

The records have the generated set's layout (training system prompt, question before the audio slot, the clip's
transcript after the audio queries), so they go through the same dataset, collator and encoder cache. Measured on
the demo (docs/training.md, "Attribute targets"), this layout gave answers that follow unseen voices when asked
in it, while records in the inference layout (audio first) or in both layouts did worse in every form. The
questions are worded unlike the held-out benchmark's (desta/evaluate/tasks/heldout.py) and
benchmarks/attribute_ranking.py's.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from desta.data.manifest import Clip, iter_clips
from desta.selfgen.records import training_messages, transcript_of

GROUP = "attribute"  # the dataset items' `group`: the collator weighs these rows' loss separately

# attribute -> (question, value of a clip or None when it lacks the attribute)
QUESTIONS: dict[str, tuple[str, Callable[[Clip], str | None]]] = {
    "gender": ("What is the speaker's gender?", lambda c: c.gender),
    "sound_class": ("What sound is this?", lambda c: c.sound_class),
    "music_instrument": ("What instrument is this?", lambda c: c.music_instrument),
}


def answer(value: str) -> str:
    """"female" -> "Female." (one word: every target token depends on the attribute)."""
    return f"{value[:1].upper()}{value[1:]}."


def attribute_records(manifest_dir: str | Path, attributes: list[str], split: str = "train") -> list[dict[str, Any]]:
    """One record per (clip of `split`, attribute the clip has), ordered by clip id then attribute."""
    unknown = sorted(set(attributes) - QUESTIONS.keys())
    if unknown:
        raise ValueError(f"train.attribute_targets.attributes: unknown {unknown}; choose from {sorted(QUESTIONS)}")
    records = []
    for clip in sorted(iter_clips(manifest_dir, splits=[split]), key=lambda c: c.id):
        for attr in attributes:
            question, value_of = QUESTIONS[attr]
            value = value_of(clip)
            if not value:
                continue
            records.append({"id": f"{clip.id}#{attr}", "clip_id": clip.id, "attribute": attr, "group": GROUP,
                            "response": answer(str(value)),
                            "messages": training_messages(question, clip.audio, transcript_of(clip))})
    if not records:
        raise ValueError(f"{manifest_dir}: no {split}-split clip has any of {attributes}; turn "
                         "train.attribute_targets off or prepare a corpus with that metadata")
    return records


def pick(n_records: int, k: int, seed: int, *where: object) -> list[int]:
    """k record indices (without repeats when k <= n) for one micro-batch, a pure function of (seed, where...):
    a resumed run draws exactly the same ones."""
    rng = random.Random(":".join(map(str, (seed, "attribute", *where))))
    return rng.sample(range(n_records), k) if k <= n_records else [rng.randrange(n_records) for _ in range(k)]
