"""Batch assembly for `desta train`: drop and count corrupt clips, then let the model build its own input layout
(system, user turn with audio markers -> [audio queries ; transcription], prompt; assistant response) with labels
on the response tokens only. Runs inside DataLoader worker processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from desta.data.audio import AudioError
from desta.train.features import row_keys

BuildInputs = Callable[[list[list[dict[str, Any]]], list[str]], dict[str, Any]]
IGNORE_INDEX = -100


class Collator:
    """items -> {"inputs": model tensors (incl. labels), "ids", "n_samples", "n_skipped", "n_tokens", "skipped"}.

    `build_inputs(conversations, responses)` is the model's (DeSTA25AudioModel.build_inputs); it tokenizes with the
    chat template, computes Whisper log-mel features from the preloaded "array" of each audio entry and masks every
    label that is not a response token with -100. `n_tokens` counts the LLM positions that are not padding."""

    def __init__(self, build_inputs: BuildInputs):
        self.build_inputs = build_inputs

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        good = [it for it in items if "error" not in it]
        skipped = [f"{it['path']} ({it['error']})" for it in items if "error" in it]
        try:
            inputs = self.build_inputs([it["messages"] for it in good], [it["response"] for it in good]) if good else {}
        except AudioError:  # e.g. a clip longer than model.max_chunks windows: find it, drop it, build the rest
            keep = []
            for it in good:
                try:
                    self.build_inputs([it["messages"]], [it["response"]])
                    keep.append(it)
                except AudioError as err:
                    skipped.append(f"{err.path} ({err.reason})")
            good = keep
            inputs = self.build_inputs([it["messages"] for it in good], [it["response"] for it in good]) if good else {}
        out: dict[str, Any] = {"ids": [it["id"] for it in good], "n_samples": len(good), "n_skipped": len(skipped),
                               "skipped": skipped, "inputs": inputs, "n_tokens": 0, "n_label_tokens": 0,
                               "keys": row_keys([it["messages"] for it in good])}
        if not good:
            return out
        out["n_tokens"] = count_tokens(inputs)
        labels = inputs.get("labels")
        out["n_label_tokens"] = int((labels != IGNORE_INDEX).sum()) if torch.is_tensor(labels) else 0
        return out


def count_tokens(inputs: dict[str, Any]) -> int:
    """LLM sequence positions that are not padding (attention_mask), else the whole input_ids grid."""
    mask = inputs.get("attention_mask")
    if torch.is_tensor(mask):
        return int(mask.sum())
    ids = inputs.get("input_ids")
    return int(ids.numel()) if torch.is_tensor(ids) else 0


def to_device(inputs: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in inputs.items()}
