"""Templated targets: the paper's ablation baseline, as a target source of `desta generate`
(`generate.target_sources: [templated]`, or `[llm, templated]` for a mix; the default is `[llm]` alone).

Instead of the backbone answering a pool prompt from the seed description, the target is written by a template
from one labelled attribute of the clip: "What is the speaker's gender?" -> "Female.", "Transcribe the speech." ->
the transcript, "Describe the sound." -> the caption. DeSTA2.5's claim is that such task-specific targets, foreign
to the backbone's own distribution, make it forget its instruction following; `python -m desta.pipeline ablation`
measures it. Each clip gets up to `prompts_per_clip` records, one per attribute it has, drawn by a hash of
(seed, clip); the question's wording is drawn from a pool per attribute. Records have the generated set's layout
(desta.records) with `target_source: templated`, ids `<clip_id>#t<k>`.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from desta.data.manifest import Clip

SOURCE = "templated"


def _label(value: str) -> str:
    """"female" -> "Female." (the whole answer depends on the attribute)."""
    return f"{value[:1].upper()}{value[1:]}."


def _sentence(value: str) -> str:
    value = value.strip()
    return value if value.endswith((".", "!", "?")) else value + "."


# attribute -> (question wordings, the clip's answer or None when it lacks the attribute)
TEMPLATES: dict[str, tuple[tuple[str, ...], Callable[[Clip], str | None]]] = {
    "transcription": (("Transcribe the speech.", "What does the speaker say?", "Write down what is said.",
                       "Give a transcript of this recording."),
                      lambda c: c.transcript.strip() if c.transcript and c.transcript.strip() else None),
    "gender": (("What is the speaker's gender?", "Is this voice a man's or a woman's?",
                "Who is speaking, a man or a woman?", "Tell me the gender of the person speaking.",
                "Identify the speaker's gender.", "What gender is the voice in this clip?",
                "Is the person talking a man or a woman?", "What is the sex of the speaker?"),
               lambda c: c.gender and _label(c.gender)),
    "emotion": (("What emotion does the speaker convey?", "How does the speaker feel?",
                 "Name the emotion in this voice."), lambda c: c.emotion and _label(c.emotion)),
    "accent": (("What accent does the speaker have?", "Where is the speaker's accent from?",
                "Identify the speaker's accent."), lambda c: c.accent and _label(c.accent)),
    "sound_class": (("What sound is this?", "What can you hear in this clip?", "Name the sound in this recording.",
                     "What is making this sound?", "Identify the sound.", "What sound do you hear?",
                     "What kind of sound is this?", "Which sound is in this recording?"),
                    lambda c: c.sound_class and _label(c.sound_class)),
    "caption": (("Describe the sound.", "Caption this audio clip.", "What happens in this recording?"),
                lambda c: c.caption and _sentence(c.caption)),
    "music_instrument": (("What instrument is this?", "Name the instrument in this recording.",
                          "Which instrument do you hear?", "What instrument is being played?",
                          "Identify the instrument.", "What is the instrument in this clip?"),
                         lambda c: c.music_instrument and _label(c.music_instrument)),
    "music_genre": (("What genre is this music?", "Name the genre of this piece."),
                    lambda c: c.music_genre and _label(c.music_genre)),
}


@dataclass(frozen=True)
class TemplatedPrompt:
    """Quacks like desta.prompt_pool.Prompt for desta.records.build_record."""

    id: str
    category: str
    text: str


def _hash(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def targets(clip: Clip, k: int, seed: int) -> list[tuple[TemplatedPrompt, str]]:
    """Up to k (question, answer) pairs for the clip, one per attribute it has; a pure function of (clip, k, seed)."""
    have = [(name, answer) for name, (_, fn) in TEMPLATES.items() if (answer := fn(clip))]
    rng = random.Random(f"desta-templated:{seed}:{clip.id}")
    chosen = rng.sample(have, min(k, len(have)))
    out = []
    for name, answer in chosen:
        wordings = TEMPLATES[name][0]
        w = _hash(f"{seed}:{clip.id}:{name}") % len(wordings)
        out.append((TemplatedPrompt(f"t-{name}-{w}", f"{SOURCE}:{name}", wordings[w]), answer))
    return out


def provenance(seed: int) -> dict[str, object]:
    """What templated records carry where LLM records name their generator: the template table's own hash."""
    table = json.dumps({name: list(wordings) for name, (wordings, _) in TEMPLATES.items()}, sort_keys=True)
    return {"generator": "templates", "generator_hash": "sha256:" + hashlib.sha256(table.encode()).hexdigest(),
            "gen_params": {}, "seed": seed}
