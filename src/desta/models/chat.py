"""`desta chat --audio FILE "instruction"`: answer an instruction about one or more audio files.

Uses the trained checkpoint (--model-dir, else paths.model when it holds one) or, with a warning, a freshly
initialised connector. Audio: wav/flac/ogg/mp3, any rate/channels (decoded by desta.data.audio); > 30 s follows
model.long_audio (chunk | error).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from desta.config import Params
from desta.conversation import inference_messages
from desta.data.audio import probe
from desta.models.audio_llm import DeSTA25AudioModel, is_checkpoint


def load_model(params: Params, model_dir: str | None) -> tuple[DeSTA25AudioModel, str]:
    """(model, where its connector came from): --model-dir, else paths.model if it is a checkpoint, else fresh."""
    cache = params.model_cache_dir()
    if model_dir is not None:
        return DeSTA25AudioModel.from_pretrained(model_dir, cache), str(model_dir)
    if is_checkpoint(params.paths.model):
        return DeSTA25AudioModel.from_pretrained(params.paths.model, cache), params.paths.model
    print(f"warning: no trained checkpoint in {params.paths.model} (run `desta train` or pass --model-dir); using an "
          "UNTRAINED connector: the answer can only use Whisper's transcription, not the sound itself",
          file=sys.stderr)
    return DeSTA25AudioModel.from_params(params.model, cache), "untrained"


def run_chat(params: Params, audio: list[Path], instruction: str, model_dir: str | None = None,
             as_json: bool = False, show_transcript: bool = False, max_new_tokens: int = 128) -> int:
    """Print the answer (plain text, or a JSON object with --json); returns the process exit code."""
    if not audio:
        raise ValueError("desta chat: pass at least one --audio FILE")
    if not instruction.strip():
        raise ValueError("desta chat: the instruction is empty; pass a question, e.g. \"What is the speaker's "
                         "emotion?\"")
    for path in audio:
        probe(path)  # fail on a missing/unreadable file before loading any model
    torch.set_grad_enabled(False)
    model, source = load_model(params, model_dir)
    result = model.generate(inference_messages(instruction, audio), max_new_tokens=max_new_tokens)[0]
    if as_json:
        print(json.dumps({"answer": result.text, "transcripts": result.transcripts, "audio": [str(p) for p in audio],
                          "instruction": instruction, "model": source}, ensure_ascii=False))
        return 0
    if show_transcript:
        for path, text in zip(audio, result.transcripts, strict=True):
            print(f"[transcript {path.name}] {text}")
    print(result.text)
    return 0
