"""Optimiser and learning-rate schedule: AdamW with linear warm-up then cosine decay."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["OptimConfig", "build_optimizer", "warmup_cosine"]


@dataclass
class OptimConfig:
    lr: float | None = 1e-3
    """Peak learning rate (reached at the end of warm-up). None: chosen by the caller (the
    adapter recipe takes the method's own default)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 20
    """Linear warm-up from 0 to ``lr`` over this many optimiser steps."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at ``lr * min_lr_ratio`` at the last step."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""

    def __post_init__(self) -> None:
        if self.lr is not None and not (0 < self.lr < float("inf")):
            raise ValueError(f"optim.lr must be a positive finite number, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError("optim.warmup_steps must be >= 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("optim.min_lr_ratio must be in [0, 1]")
        if self.grad_clip < 0:
            raise ValueError("optim.grad_clip must be >= 0")


def warmup_cosine(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak lr at optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(
    params: list[torch.nn.Parameter], cfg: OptimConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``params`` (biases and norms included: adapters are small) and its schedule."""
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: warmup_cosine(
            s, warmup_steps=cfg.warmup_steps, total_steps=total_steps, min_lr_ratio=cfg.min_lr_ratio
        ),
    )
    return optimizer, scheduler
