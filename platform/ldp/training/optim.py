"""Optimiser and learning-rate schedule: AdamW with linear warm-up then cosine decay."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["LR_SCALE_ATTR", "OptimConfig", "build_optimizer", "param_groups", "set_lr_scale", "warmup_cosine"]

LR_SCALE_ATTR = "ldp_lr_scale"
"""Attribute of a parameter: its learning rate is ``optim.lr`` times this (default 1). Set on the
parameter object itself, so every optimiser built from a plain parameter list (the local trainer
and every DeepSpeed strategy) honours it without a second way of naming parameters."""


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
    """AdamW over ``params`` (biases and norms included: adapters are small) and its schedule.

    Parameters marked by :func:`set_lr_scale` form their own groups (:func:`param_groups`); the
    schedule multiplies every group's own peak rate."""
    optimizer = torch.optim.AdamW(
        param_groups(params, cfg.lr), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
        weight_decay=cfg.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: warmup_cosine(
            s, warmup_steps=cfg.warmup_steps, total_steps=total_steps, min_lr_ratio=cfg.min_lr_ratio
        ),
    )
    return optimizer, scheduler


def set_lr_scale(params, scale: float) -> None:
    """Train ``params`` at ``scale`` times the optimiser's learning rate."""
    if not (0 < scale < float("inf")):
        raise ValueError(f"a learning-rate scale must be a positive finite number, got {scale}")
    for p in params:
        setattr(p, LR_SCALE_ATTR, float(scale))


def param_groups(params: list[torch.nn.Parameter], lr: float) -> list[dict]:
    """One AdamW group per learning-rate scale, in first-seen order with the unscaled group first
    (its rate is the one the trainer logs)."""
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for p in params:
        groups.setdefault(float(getattr(p, LR_SCALE_ATTR, 1.0)), []).append(p)
    order = sorted(groups, key=lambda s: s != 1.0)  # stable: 1.0 first, others as seen
    return [{"params": groups[s], **({} if lr is None else {"lr": lr * s})} for s in order]
