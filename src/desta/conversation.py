"""How one DeSTA2.5 conversation is laid out as messages: the contract every stage shares.

Messages follow the official release (desta.md): `{"role", "content", "audios": [{"audio": path, "text": transcript
or None}]}` with one `<|AUDIO|>` marker per audio in `content`. Three layouts exist, each built here and nowhere else:
  inference_messages  how a trained model is asked (`desta chat`, `desta evaluate`, the served MLflow model, the
                      generated set's inference-form records): the audio, a blank line, the instruction
  training_messages   a generated record's `messages`: the prompt before the audio slot, as in DeSTA-AQA5M
  generator_messages  what the text-only generator sees in place of the audio: seed description + prompt
`desta.models.layout` turns any of them into token ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

AUDIO, START, END = "<|AUDIO|>", "<start_audio>", "<end_audio>"
AUDIO_SLOT = f"{START}{AUDIO}{END}"
# the training-side system prompt of the released data (desta.md, "Training record")
TRAIN_SYSTEM_PROMPT = "You are a helpful assistant. The audio clips appear between <start_audio> and <end_audio> tags."

Conversation = list[dict[str, Any]]
AudioRef = str | Path | dict[str, Any]


def audio_entry(audio: AudioRef, text: str | None = None) -> dict[str, Any]:
    """`{"audio": path, "text": transcript}`; a dict (e.g. with an in-memory "array") is used as it is."""
    if isinstance(audio, dict):
        return {"text": text, **audio}
    return {"audio": str(audio), "text": text}


def inference_messages(instruction: str, audios: Sequence[AudioRef] = (), system: str | None = None) -> Conversation:
    """The one layout a model is asked in: `[system]`, then a user turn of one `<|AUDIO|>` per audio, a blank line and
    the instruction (DeSTA2.5's own evaluation prompt, its MMAU pipeline). `system=None` leaves the model's own system
    prompt (model.system_prompt) to the layout; benchmarks pass their official one. An instruction that already
    places its `<|AUDIO|>` markers is used verbatim; with no audios the turn is the instruction alone."""
    entries = [audio_entry(a) for a in audios]
    if not entries or AUDIO in instruction:
        content = instruction
    else:
        content = AUDIO * len(entries) + "\n\n" + instruction
    user: dict[str, Any] = {"role": "user", "content": content}
    if entries:
        user["audios"] = entries
    return ([{"role": "system", "content": system}] if system else []) + [user]


def training_messages(prompt: str, audio: str, transcript: str | None) -> Conversation:
    """A generated record's `messages`: the training system prompt, then the prompt before the audio slot."""
    return [
        {"role": "system", "content": TRAIN_SYSTEM_PROMPT},
        {"role": "user", "content": f"{prompt} {AUDIO_SLOT}", "audios": [audio_entry(audio, transcript)]},
    ]


def generator_user_message(seed_description: str, prompt: str) -> str:
    """What the text LLM sees in place of the audio: the seed description, a blank line, then the instruction."""
    return f"{seed_description}\n\n{prompt}"


def generator_messages(seed_description: str, prompt: str, system_prompt: str) -> list[dict[str, str]]:
    """The generator's chat: its system prompt, then the seed description standing in for the audio + the prompt."""
    return [{"role": "system", "content": system_prompt},
            {"role": "user", "content": generator_user_message(seed_description, prompt)}]


def without_audio(conversation: Conversation) -> Conversation:
    """The same conversation with every audio removed (entries and `<|AUDIO|>` markers): the text-only question
    whose option likelihoods calibrate likelihood-ranked multiple choice."""
    out = []
    for m in conversation:
        if m.get("audios"):
            content = " ".join(part.strip() for part in str(m.get("content", "")).split(AUDIO) if part.strip())
            m = {k: v for k, v in m.items() if k != "audios"} | {"content": content}
        out.append(m)
    return out
