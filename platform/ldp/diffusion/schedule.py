"""Noise schedules over discrete time t = 0..T: the marginal corruption probability beta_t.

beta_t is the probability that a response token is corrupted in x_t ~ q(x_t | x_0):
beta_0 = 0 (clean), beta_T = 1 (fully corrupted), non-decreasing in between.

- linear: beta_t = t / T
- cosine: beta_t = 1 - cos(pi/2 * t / T) (slow corruption early, fast late)

The same functions serve the sampler's fractional times (``num_steps=1``, ``t`` in [0, 1]).
"""

from __future__ import annotations

import math

import torch

from ldp.errors import UsageError

__all__ = ["corruption_prob", "elbo_weight", "loss_weight"]


def corruption_prob(t: torch.Tensor | float, num_steps: int, kind: str = "linear") -> torch.Tensor:
    """beta_t for integer (or fractional) steps ``t`` in [0, T]: (...) -> (...) float32.

    Computed in float64 so that beta_T is exactly 1 and differences of neighbours are exact.
    """
    if num_steps < 1:
        raise UsageError(f"num_steps must be >= 1, got {num_steps}")
    frac = (torch.as_tensor(t, dtype=torch.float64) / num_steps).clamp(0.0, 1.0)
    if kind == "linear":
        beta = frac
    elif kind == "cosine":
        beta = 1.0 - torch.cos(0.5 * math.pi * frac)
    else:
        raise UsageError(f"unknown schedule {kind!r} (linear, cosine)")
    return beta.to(torch.float32)


def elbo_weight(t: torch.Tensor, num_steps: int, kind: str = "linear") -> torch.Tensor:
    """T * (beta_t - beta_{t-1}) / beta_t for integer steps t in 1..T: (B,) -> (B,) float32.

    Absorbing process, x0-parameterised reverse model: the KL term of step t is, per masked
    position, (beta_t - beta_{t-1}) / beta_t * -log p(x0 | x_t) (the chance that the position is
    revealed between t and t-1, times its cross-entropy). Drawing t uniformly from 1..T,
    ``elbo_weight(t) * sum_{masked} -log p(x0 | x_t)`` is therefore an unbiased estimate of the
    NLL upper bound (the prior term vanishes because beta_T = 1, and t = 1 is the reconstruction
    term). Linear schedule: exactly T / t.
    """
    t = torch.as_tensor(t)
    cur = corruption_prob(t, num_steps, kind).double()
    prev = corruption_prob(t - 1, num_steps, kind).double()
    return (num_steps * (cur - prev) / cur.clamp_min(1e-12)).float()


def loss_weight(t: torch.Tensor, num_steps: int, kind: str, weighting: str) -> torch.Tensor:
    """Per-sequence loss weight w_t for integer steps ``t``: (B,) -> (B,) float32.

    ``weighting``: elbo (:func:`elbo_weight`), inv_t (T / t) or none (1); see DiffusionConfig.
    """
    t = torch.as_tensor(t)
    if weighting == "elbo":
        return elbo_weight(t, num_steps, kind)
    if weighting == "inv_t":
        return num_steps / t.float()
    if weighting == "none":
        return torch.ones(t.shape)
    raise UsageError(f"unknown loss weighting {weighting!r} (elbo, inv_t, none)")
