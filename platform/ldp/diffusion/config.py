"""The diffusion process's configuration (DESIGN §2 "Diffusion process")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["DiffusionConfig"]


@dataclass
class DiffusionConfig:
    num_steps: int = 100
    """T: discrete diffusion steps t = 1..T."""
    transition: Literal["absorbing", "uniform"] = "absorbing"
    """absorbing: corrupted tokens become [MASK]; uniform: a uniformly random vocabulary token."""
    schedule: Literal["linear", "cosine"] = "linear"
    """Marginal corruption probability beta_t: linear t/T, cosine 1 - cos(pi/2 * t/T)."""
    loss_weighting: Literal["elbo", "inv_t", "none"] = "elbo"
    """Per-token weight of the cross-entropy at step t.

    elbo: T * (beta_t - beta_{t-1}) / beta_t, the discrete-time ELBO weight (for the linear
    schedule exactly T/t, LLaDA's 1/t); inv_t: T/t whatever the schedule; none: 1."""
    loss_norm: Literal["tokens", "sequence", "corrupted", "batch"] = "tokens"
    """How the weighted token losses of a batch become one number.

    tokens: sum / response tokens in the batch (a per-token NLL bound; LLaDA pretraining);
    sequence: per sequence sum / its response length, then the batch mean (LLaDA SFT);
    corrupted: sum / corrupted tokens (lower variance, not a bound);
    batch: sum / batch size (per-sequence ELBO)."""
    min_one_corrupted: bool = True
    """Corrupt at least one response token per sequence (small t would often corrupt none and
    waste the example)."""

    def __post_init__(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"diffusion.num_steps must be >= 1, got {self.num_steps}")
        if self.transition == "uniform" and self.loss_norm == "corrupted":
            raise ValueError(
                "diffusion.loss_norm=corrupted needs the absorbing transition "
                "(uniform corruption cannot tell which tokens were corrupted)"
            )
