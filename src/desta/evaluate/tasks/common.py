"""Helpers shared by the Task classes of `desta evaluate`: conversations in DeSTA's message format, reading the
released benchmark files (with a clear error naming where to obtain them), and slice labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from desta.conversation import AUDIO, inference_messages, without_audio  # noqa: F401 (AUDIO, without_audio: for tasks)

DESTA_SYSTEM = "Focus on the audio clips and instructions."
MCQ_SYSTEM = 'Focus on the audio clips and instructions. Put your answer in the format "The correct answer is: "___" ".'
IF_SYSTEM = "Follow the given instructions."


class BenchmarkFilesError(FileNotFoundError):
    """A released benchmark file is missing or malformed; the message says where to obtain it."""


def audio_conversation(audio: str | None, text: str, system: str | None = None) -> list[dict[str, Any]]:
    """One benchmark item in the model's inference layout (desta.conversation.inference_messages): the audio, a blank
    line, the text, under the benchmark's system prompt; text-only when audio is None."""
    return inference_messages(text, [audio] if audio is not None else [], system)


def mcq_prompt(question: str, choices: list[str]) -> str:
    """DeSTA2.5's MMAU prompt: `{question} Choose from the following options: "a", "b", "c" or "d"`."""
    quoted = [f'"{c}"' for c in choices]
    listed = quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]
    return f"{question} Choose from the following options: {listed}"


def require(path: Path, benchmark: str, how: str) -> Path:
    if not path.exists():
        task = benchmark.lower().replace("-", "_")
        raise BenchmarkFilesError(f"{path}: missing {benchmark} file. {how} (layout: docs/evaluation.md, section "
                                  f"'{benchmark}'); or drop '{task}' from params.evaluate.tasks")
    return path


def read_jsonl(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise BenchmarkFilesError(f"{path}:{n}: not valid JSON ({err.msg}); the file must be the released "
                                          "JSONL, one object per line") from None
            check_fields(row, required, f"{path}:{n}")
            rows.append(row)
    return rows


def read_json_list(path: Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BenchmarkFilesError(f"{path}: not valid JSON ({err.msg}); use the released file unchanged") from None
    if not isinstance(rows, list):
        raise BenchmarkFilesError(f"{path}: expected a JSON list of items, got {type(rows).__name__}")
    for n, row in enumerate(rows):
        check_fields(row, required, f"{path}[{n}]")
    return rows


def check_fields(row: Any, required: tuple[str, ...], where: str) -> None:
    missing = [k for k in required if not isinstance(row, dict) or k not in row]
    if missing:
        raise BenchmarkFilesError(f"{where}: missing field(s) {', '.join(missing)}; the released format has "
                                  f"{', '.join(required)}")


def resolve_audio(root: Path, rel: str) -> str:
    """Released files name audio relative to their own folder ("./test-mini-audios/x.wav")."""
    p = Path(rel)
    return str(p if p.is_absolute() else (root / p).resolve())


def duration_bucket(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return "under5s" if seconds < 5 else "5to15s" if seconds < 15 else "over15s"  # MLflow-safe metric names
