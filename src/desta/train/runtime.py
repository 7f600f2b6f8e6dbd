"""Process set-up of one `desta train` rank: its device (LOCAL_RANK under torchrun/deepspeed), its seeds, and the
deterministic-kernel switch (train.deterministic). Used by desta.train.recipe.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def deterministic_kernels(on: bool) -> Iterator[None]:
    """train.deterministic: inside, PyTorch picks deterministic kernels only (an op that has none raises a
    RuntimeError naming it) and cuDNN does not autotune; CUBLAS_WORKSPACE_CONFIG is set for cuBLAS's
    reproducible mode (it must precede the process's first cuBLAS call, so set it in the environment yourself when
    something used CUDA before training). The previous settings are restored on exit."""
    if not on:
        yield
        return
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[1], saved[2]


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")
