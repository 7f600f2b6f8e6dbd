"""Attribute targets for `desta train` (train.attribute_targets): one short answer per train clip, attribute and
question order, read from the manifest's metadata ("Is this voice a man's or a woman's?" -> "Female."), trained
beside the self-generated set. Not in the DeSTA2.5 recipe; docs/training.md ("Attribute targets") has the
measurements that put it in the CPU demo's default.

Each clip gets one record per order in `orders`: "question-first" in the generated set's layout (training system
prompt, the question before the audio slot, the clip's transcript after the audio queries) and "audio-first" in the
layout `desta chat` / `desta evaluate` ask in (the audio, a blank line, the question; the model's system prompt).
Each record's question is drawn, by a hash of (record, order), from a pool of wordings per attribute. Measured on the
demo: with one wording the answer followed unseen voices by likelihood but its threshold sat on one value whenever
the question was worded or placed otherwise (e.g. the held-out benchmark's "What is the gender of the speaker?"
after the audio: "male" to every clip); a pool of wordings in both orders let the benchmark's own open question be
answered right for 26 of 31 unseen-voice clips. No wording is the held-out benchmark's
(desta/evaluate/tasks/heldout.py) or benchmarks/attribute_ranking.py's.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from desta.conversation import audio_entry, inference_messages, training_messages
from desta.data.manifest import Clip, iter_clips
from desta.records import transcript_of

GROUP = "attribute"  # the dataset items' `group`: the collator weighs these rows' loss separately
# question order -> (suffix of the key its wording is drawn by, the messages builder of that layout)
def _audio_first(prompt: str, audio: str, transcript: str | None) -> list[dict[str, Any]]:
    return inference_messages(prompt, [audio_entry(audio, transcript)])


LAYOUTS: dict[str, tuple[str, Callable[[str, str, str | None], list[dict[str, Any]]]]] = {
    "question-first": ("pf", training_messages), "audio-first": ("af", _audio_first)}
ORDERS = tuple(LAYOUTS)

# attribute -> (question wordings, value of a clip or None when it lacks the attribute)
QUESTIONS: dict[str, tuple[tuple[str, ...], Callable[[Clip], str | None]]] = {
    "gender": (("What is the speaker's gender?", "Is this voice a man's or a woman's?",
                "Who is speaking, a man or a woman?", "Tell me the gender of the person speaking.",
                "Identify the speaker's gender.", "What gender is the voice in this clip?",
                "Is the person talking a man or a woman?", "What is the sex of the speaker?"), lambda c: c.gender),
    "sound_class": (("What sound is this?", "What can you hear in this clip?", "Name the sound in this recording.",
                     "What is making this sound?", "Identify the sound.", "What sound do you hear?",
                     "What kind of sound is this?", "Which sound is in this recording?"), lambda c: c.sound_class),
    "music_instrument": (("What instrument is this?", "Name the instrument in this recording.",
                          "Which instrument do you hear?", "What instrument is being played?",
                          "Identify the instrument.", "What is the instrument in this clip?"),
                         lambda c: c.music_instrument),
}


def answer(value: str) -> str:
    """"female" -> "Female." (one word: every target token depends on the attribute)."""
    return f"{value[:1].upper()}{value[1:]}."


def wording(attribute: str, key: str) -> str:
    """The attribute's question for one record: a pure function of `key`, so every run builds the same records."""
    pool = QUESTIONS[attribute][0]
    return pool[hashlib.sha256(key.encode()).digest()[0] % len(pool)]


def attribute_records(manifest_dir: str | Path, attributes: list[str], split: str = "train",
                      orders: list[str] | tuple[str, ...] = ORDERS) -> list[dict[str, Any]]:
    """Records for every (clip of `split`, attribute the clip has, order), ordered by clip id, attribute, order."""
    unknown = sorted(set(attributes) - QUESTIONS.keys())
    if unknown:
        raise ValueError(f"train.attribute_targets.attributes: unknown {unknown}; choose from {sorted(QUESTIONS)}")
    bad = sorted(set(orders) - set(ORDERS))
    if bad or not orders:
        raise ValueError(f"train.attribute_targets.orders: {bad or 'empty'}; choose from {list(ORDERS)}")
    records = []
    for clip in sorted(iter_clips(manifest_dir, splits=[split]), key=lambda c: c.id):
        for attr in attributes:
            value = QUESTIONS[attr][1](clip)
            if not value:
                continue
            rid, transcript = f"{clip.id}#{attr}", transcript_of(clip)
            for order, (suffix, layout) in LAYOUTS.items():
                if order in orders:
                    records.append({"id": rid if order == ORDERS[0] else f"{rid}@{order}", "clip_id": clip.id,
                                    "attribute": attr, "order": order, "group": GROUP, "response": answer(str(value)),
                                    "messages": layout(wording(attr, rid + suffix), clip.audio, transcript)})
    if not records:
        raise ValueError(f"{manifest_dir}: no {split}-split clip has any of {attributes}; turn "
                         "train.attribute_targets off or prepare a corpus with that metadata")
    return records


def pick(n_records: int, k: int, seed: int, *where: object) -> list[int]:
    """k record indices (without repeats when k <= n) for one micro-batch, a pure function of (seed, where...):
    a resumed run draws exactly the same ones."""
    rng = random.Random(":".join(map(str, (seed, "attribute", *where))))
    return rng.sample(range(n_records), k) if k <= n_records else [rng.randrange(n_records) for _ in range(k)]
