"""Seed descriptions: a clip's metadata rendered as the text the backbone LLM "hears" (the DeSTA paper's format).

Used by `desta generate` (the generator reads it in place of the audio) and `desta evaluate` (the backbone answers
the held-out instruction-following items from it, the reference of the forgetting rate). Format, one line per
timestamped segment:
    [mm:ss-mm:ss] <transcript> (<Attribute>: <value>, ..., Duration: Ns)
e.g. `[00:00-00:02] Excuse me? (Emotion: Neutral, Gender: Female, Pitch: Very high, Duration: 2s)`.
Clips without speech (sound, music, speechless speech clips) get the attribute part only. Attribute order and the
spelling of values are fixed here (ATTRIBUTE_ORDER, normalise_value) so the same metadata always gives the same text.
"""

from __future__ import annotations

import math
import re
from typing import Any

from desta.data.manifest import Clip

# (label, Clip field) in the order they appear; speech attributes first, then sound/music, then the mixture.
SPEECH_FIELDS = (
    ("Emotion", "emotion"), ("Gender", "gender"), ("Age", "age"), ("Accent", "accent"), ("Pitch", "pitch"),
    ("Volume", "volume"), ("Speaking speed", "speaking_speed"), ("Speaker", "speaker"), ("Language", "language"),
)
MUSIC_FIELDS = (
    ("Genre", "music_genre"), ("Instrument", "music_instrument"), ("Key", "music_key"), ("Mode", "music_mode"),
)
SEGMENT_FIELDS = (("Speaker", "speaker"), ("Emotion", "emotion"), ("Gender", "gender"))
ATTRIBUTE_ORDER = tuple(label for label, _ in SPEECH_FIELDS + MUSIC_FIELDS) + (
    "Tempo", "Chords", "Sound", "Caption", "Background", "SNR", "Reverb", "Duration")

# Values kept verbatim (case matters: accents, names, keys like "C#", free text).
_VERBATIM = {"Speaker", "Caption", "Key", "Chords", "Accent"}
_SPACE = re.compile(r"\s+")


def normalise_value(label: str, value: Any) -> str | None:
    """One attribute value -> its stable spelling: trimmed, single-spaced, underscores as spaces, first letter upper.

    Returns None for empty values (the attribute is then left out). Numbers print without a trailing ".0".
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "Yes" if value else "No"
    if isinstance(value, float):
        if math.isnan(value):
            return None
        value = int(value) if value.is_integer() else round(value, 1)
    text = _SPACE.sub(" ", str(value).replace("_", " ")).strip()
    if not text:
        return None
    if label in _VERBATIM:
        return text
    return text[0].upper() + text[1:].lower() if not any(c.isdigit() for c in text[:1]) else text


def format_timestamp(seconds: float) -> str:
    """12.4 -> "00:12"; 3725 -> "01:02:05" (hours only when needed). Start times floor, end times use fmt_end."""
    total = max(0, int(math.floor(seconds + 1e-6)))
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return f"{h:02d}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


def _span(start: float, end: float) -> str:
    return f"[{format_timestamp(start)}-{format_timestamp(math.ceil(end - 1e-6))}]"


def format_duration(seconds: float) -> str:
    """Whole seconds as in the paper ("2s"); clips under a second keep one decimal ("0.6s")."""
    return f"{seconds:.1f}s" if seconds < 1 else f"{int(round(seconds))}s"


def clip_attributes(clip: Clip) -> list[tuple[str, str]]:
    """The clip-level (label, value) pairs in ATTRIBUTE_ORDER, then corpus extras from `attributes`, then Duration."""
    pairs: list[tuple[str, Any]] = []
    if clip.domain == "speech" or clip.transcript:
        pairs += [(label, getattr(clip, f)) for label, f in SPEECH_FIELDS]
    pairs += [(label, getattr(clip, f)) for label, f in MUSIC_FIELDS]
    if clip.music_tempo_bpm is not None:
        pairs.append(("Tempo", f"{int(round(clip.music_tempo_bpm))} bpm"))
    if clip.music_chords:
        pairs.append(("Chords", " - ".join(clip.music_chords)))
    if clip.sound_labels:
        pairs.append(("Sound", ", ".join(normalise_value("Sound", s) or "" for s in clip.sound_labels if s)))
    pairs.append(("Caption", clip.caption))
    pairs.append(("Background", clip.background))
    if clip.snr_db is not None:
        pairs.append(("SNR", f"{int(round(clip.snr_db))} dB"))
    pairs.append(("Reverb", clip.reverb))
    out = [(k, n) for k, v in pairs if (n := (v if k in {"Tempo", "SNR", "Sound"} else normalise_value(k, v)))]
    seen = {k for k, _ in out}
    for k, v in (clip.attributes or {}).items():
        label = normalise_value("Label", k)
        value = normalise_value(label or "", v)
        if label and value and label not in seen:
            out.append((label, value))
    out.append(("Duration", format_duration(clip.duration)))
    return out


def _render_attrs(pairs: list[tuple[str, str]]) -> str:
    return "(" + ", ".join(f"{k}: {v}" for k, v in pairs) + ")"


def _segment_line(seg: dict[str, Any]) -> str:
    text = _SPACE.sub(" ", str(seg.get("text") or "")).strip()
    attrs = [(label, n) for label, key in SEGMENT_FIELDS if (n := normalise_value(label, seg.get(key)))]
    parts = [_span(float(seg["start"]), float(seg["end"]))]
    if text:
        parts.append(text)
    if attrs:
        parts.append(_render_attrs(attrs))
    return " ".join(parts)


def seed_description(clip: Clip) -> str:
    """Metadata -> seed description (deterministic; see the module docstring for the format).

    Single-segment clips: one line `[00:00-<end>] <transcript> (<attributes>, Duration: Ns)`.
    Multi-segment clips (`segments`): one line per segment with its own speaker/emotion/gender, then a last line
    `[00:00-<end>] (<clip attributes>, Duration: Ns)` with the clip-level attributes.
    """
    attrs = clip_attributes(clip)
    whole = _span(0.0, clip.duration)
    if clip.segments:
        lines = [_segment_line(s) for s in sorted(clip.segments, key=lambda s: (float(s["start"]), float(s["end"])))]
        lines.append(f"{whole} {_render_attrs(attrs)}")
        return "\n".join(lines)
    transcript = _SPACE.sub(" ", clip.transcript or "").strip()
    head = f"{whole} {transcript}" if transcript else whole
    return f"{head} {_render_attrs(attrs)}"


def has_speech_text(clip: Clip) -> bool:
    """True when the clip carries words (a transcript or segment texts): transcription prompts apply to it."""
    if clip.transcript and clip.transcript.strip():
        return True
    return any((s.get("text") or "").strip() for s in clip.segments or [])


_LABELS = "|".join(re.escape(label) for label in ATTRIBUTE_ORDER + ("Number of speakers",))
_ECHO_SPAN = re.compile(r"\[\d{1,2}:\d{2}(?::\d{2})?\s*-\s*\d{1,2}:\d{2}(?::\d{2})?\]\s*")
_ECHO_ATTRS = re.compile(rf"\s*\((?:{_LABELS}):[^)]*(?:\)|$)")


def strip_description_echo(text: str) -> str:
    """Remove verbatim pieces of the seed-description format from a response: `[mm:ss-mm:ss]` spans and
    `(Label: value, ...)` attribute blocks (closed or cut off by the token limit). Small generators often recite
    the description for repeat/transcribe prompts; what remains ("Her grandmother counted the boats.") is the
    answer. Other text is left untouched; the validate gate still checks for leaks that survive."""
    out = _ECHO_ATTRS.sub("", _ECHO_SPAN.sub("", text))
    return _SPACE.sub(" ", out).strip()
