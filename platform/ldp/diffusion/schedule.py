"""Noise schedules over discrete time t = 0..T: the marginal corruption probability beta_t.

beta_0 = 0 (clean), beta_T = 1 (fully corrupted), non-decreasing in between.
"""

from __future__ import annotations

import math

import torch

__all__ = ["corruption_prob", "elbo_weight", "loss_weight"]


def corruption_prob(t: torch.Tensor | float, num_steps: int, kind: str = "linear") -> torch.Tensor:
    """beta_t for integer (or fractional) steps ``t`` in [0, T]: (...) -> (...) float."""
    frac = torch.as_tensor(t, dtype=torch.float64) / num_steps
    frac = frac.clamp(0.0, 1.0)
    if kind == "linear":
        beta = frac
    elif kind == "cosine":
        beta = 1.0 - torch.cos(0.5 * math.pi * frac)
    else:
        raise ValueError(f"unknown schedule {kind!r} (linear, cosine)")
    return beta.to(torch.float32)


def elbo_weight(t: torch.Tensor, num_steps: int, kind: str = "linear") -> torch.Tensor:
    """T * (beta_t - beta_{t-1}) / beta_t for integer steps t >= 1: (B,) -> (B,) float.

    Sampling t uniformly from 1..T, ``elbo_weight(t) * sum_{masked} -log p(x0 | x_t)`` is an
    unbiased estimate of the absorbing-state diffusion NLL bound (the prior term vanishes because
    beta_T = 1). For the linear schedule it equals T / t.
    """
    t = torch.as_tensor(t)
    cur = corruption_prob(t, num_steps, kind).double()
    prev = corruption_prob(t - 1, num_steps, kind).double()
    return (num_steps * (cur - prev) / cur.clamp_min(1e-12)).float()


def loss_weight(t: torch.Tensor, num_steps: int, kind: str, weighting: str) -> torch.Tensor:
    """Per-sequence loss weight for steps ``t`` (B,) under ``weighting`` (see DiffusionConfig)."""
    if weighting == "elbo":
        return elbo_weight(t, num_steps, kind)
    if weighting == "inv_t":
        return num_steps / torch.as_tensor(t).float()
    if weighting == "none":
        return torch.ones(torch.as_tensor(t).shape)
    raise ValueError(f"unknown loss weighting {weighting!r}")
