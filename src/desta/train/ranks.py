"""What the ranks of a `desta train` job agree on (torch.distributed; everything is a no-op on one rank): objects
rank 0 computed once (the data index), sums of per-rank figures (losses, samples, skipped clips), and the label
tokens of each global micro-batch, by which every rank weighs its share of the loss.

The sums travel as float64 on the engine's device (NCCL reduces CUDA tensors only; gloo CPU ones).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from desta.train.deepspeed import Engine


def _device(engine: Engine) -> torch.device:
    device = getattr(engine, "device", torch.device("cpu"))
    return device if torch.distributed.get_backend() == "nccl" else torch.device("cpu")


def broadcast(obj: Any, engine: Engine) -> Any:
    """Rank 0's `obj` on every rank (pickled; for small objects and numpy arrays, not tensors on a device)."""
    if engine.world_size == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0, device=_device(engine))
    return box[0]


def on_rank0(fn: Callable[[], Any], engine: Engine) -> Any:
    """fn() run by rank 0 alone (e.g. scanning the data set once) and its result on every rank. When it raises,
    rank 0 re-raises the error and the other ranks raise a RuntimeError with its message, instead of waiting
    forever for a broadcast that never comes."""
    result, error = None, None
    if engine.is_main:
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - re-raised right below, on every rank
            error = err
    result, message = broadcast((result, None if error is None else str(error)), engine)
    if error is not None:
        raise error
    if message is not None:
        raise RuntimeError(f"rank 0 failed: {message}")
    return result


def sum_over_ranks(values: list[float], engine: Engine) -> list[float]:
    """Element-wise sums of every rank's `values` (the same list on one rank)."""
    if engine.world_size == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device(engine))
    torch.distributed.all_reduce(t)
    return t.tolist()


def global_label_tokens(batch: dict[str, Any], engine: Engine) -> float:
    """Label tokens of the global micro-batch this rank's `batch` is a slice of; 0 when the global batch is to be
    skipped (on one rank: no readable clip; on several: some rank has none, so all skip it together and their
    forward/backward passes stay paired)."""
    empty = 0.0 if batch["n_samples"] else 1.0
    tokens, empties = sum_over_ranks([float(batch["n_label_tokens"]), empty], engine)
    return 0.0 if empties else tokens
