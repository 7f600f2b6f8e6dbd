"""Learning-rate schedule and optimizer parameter groups for `desta train` (torch and DeepSpeed paths alike).

Linear warmup (paper: 5000 steps at full scale) then cosine or linear decay to `min_lr_ratio * lr`, or constant.
The schedule is a pure function of the optimizer step, so a resumed run reproduces it exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from desta.config import TrainConfig


def lr_factor(step: int, warmup_steps: int, max_steps: int, kind: str = "cosine", min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based: the factor used by the step-th update)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    if kind == "linear":
        shape = 1.0 - progress
    elif kind == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"train.lr_schedule: unknown schedule {kind!r}; use cosine, linear or constant")
    return min_ratio + (1.0 - min_ratio) * shape


def schedule_fn(cfg: TrainConfig) -> Callable[[int], float]:
    return lambda step: lr_factor(step, cfg.warmup_steps, cfg.max_steps, cfg.lr_schedule, cfg.min_lr_ratio)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters only, split into decayed (matrices) and undecayed (biases, norms, 1-d tensors).
    Frozen parameters never reach the optimizer (asserted by the recipe)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters; check model.lora / the connector freezing logic")
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the paper's betas (0.9, 0.98) and weight decay 0.01 (values from params)."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                             weight_decay=cfg.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule_fn(cfg))
