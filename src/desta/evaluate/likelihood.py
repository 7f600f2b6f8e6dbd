"""Multiple choice by likelihood for `desta evaluate` (evaluate.choice_scoring): rank each option by the summed
log-probability the model gives it as the assistant's whole answer (lm-eval's `multiple_choice`), teacher forced,
end-of-turn included. Independent of the answer's wording, so it shows what the connector carries even when a small
LLM's free-form answer names no option. Each clip's audio goes through the frozen encoder once, whatever the number
of options. Shapes: windows are the model's [L, frames, d] tapped states per 30 s window (desta.models.audio_llm).
"""

from __future__ import annotations

from typing import Any

import torch

from desta.models.layout import pad_windows


@torch.no_grad()
def option_logprobs(model: Any, conversations: list[list[dict]], options: list[list[str]],
                    batch_size: int = 8) -> list[list[float]]:
    """Per conversation, the summed log-probability of every option (in order) as the whole answer."""
    if len(options) != len(conversations):
        raise ValueError(f"option_logprobs: {len(conversations)} conversations but {len(options)} option lists")
    flat: list[float] = []
    for start in range(0, len(conversations), batch_size):  # memory: one group's encoder states at a time
        group, windows = encode_once(model, conversations[start:start + batch_size])
        rows = [(i, opt) for i, opts in enumerate(options[start:start + batch_size]) for opt in opts]
        for first in range(0, len(rows), batch_size):
            chunk = rows[first:first + batch_size]
            flat += _answer_logprobs(model, [group[i] for i, _ in chunk], [opt for _, opt in chunk],
                                     [w for i, _ in chunk for w in windows[i]])
    out, k = [], 0
    for opts in options:
        out.append(flat[k:k + len(opts)])
        k += len(opts)
    return out


def _answer_logprobs(model: Any, convs: list[list[dict]], answers: list[str], windows: list[torch.Tensor]
                     ) -> list[float]:
    """Summed log p(answer tokens | conversation) per row, the audio given as precomputed window states."""
    inputs = model.prepare_batch(convs, answers, features=False)[0]
    inputs["audio_hidden"] = pad_windows(windows, inputs["audio_frames"])
    logits = model(**inputs).logits[:, :-1].float()
    labels = inputs["labels"][:, 1:].to(logits.device)
    mask = labels != -100
    tok = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (tok * mask).sum(-1).tolist()


def encode_once(model: Any, conversations: list[list[dict]]) -> tuple[list[list[dict]], list[list[torch.Tensor]]]:
    """The conversations' audio through the frozen encoder (and Whisper's transcription where `text` is None) once:
    (the conversations with every audio's text filled in, per conversation its windows' tapped states
    [L, frames, d]), so scoring several answers to one conversation does not re-encode its audio."""
    batch, transcripts = model.prepare_batch(conversations, None, keep_encoder=True)
    frames = batch["audio_frames"]
    hidden = batch.get("audio_hidden")
    if hidden is None and frames.numel():
        hidden = model.encode_audio(batch["input_features"], frames)
    owner = batch["audio_batch_index"].tolist()
    filled, windows = [], []
    for row, conv in enumerate(conversations):
        texts = iter(transcripts[row])  # one per audio, in message order (shared across messages)
        filled.append([{**m, "audios": [a if a.get("text") is not None else {**a, "text": t}
                                        for a, t in zip(m["audios"], texts, strict=False)]}
                       if m.get("audios") else m for m in conv])
        windows.append([hidden[j, :, :int(frames[j])] for j, b in enumerate(owner) if b == row])
    return filled, windows
