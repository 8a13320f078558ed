"""The diffusion process's configuration (docs/METHOD.md, "The diffusion process").

Built from YAML / ``--set`` through :func:`ldp.config.build`; ``__post_init__`` refuses bad values
and inconsistent combinations with one ``ValueError`` line (turned into ``UsageError`` by the
builder), so a bad config fails before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["LOSS_NORMS", "LOSS_WEIGHTINGS", "SCHEDULES", "TRANSITIONS", "DiffusionConfig"]

TRANSITIONS = ("absorbing", "uniform")
SCHEDULES = ("linear", "cosine")
LOSS_WEIGHTINGS = ("elbo", "inv_t", "none")
LOSS_NORMS = ("tokens", "answer_length", "corrupted", "batch")


@dataclass
class DiffusionConfig:
    num_steps: int = 100
    """T: discrete diffusion steps t = 1..T (t = 0 is the clean sequence, t = T fully corrupted)."""

    transition: Literal["absorbing", "uniform"] = "absorbing"
    """Forward corruption. absorbing: a corrupted token becomes [MASK] (the default, as LLaDA and
    MDLM); uniform: it becomes a uniformly random vocabulary token (never [MASK])."""

    schedule: Literal["linear", "cosine"] = "linear"
    """Marginal corruption probability beta_t: linear t/T, cosine 1 - cos(pi/2 * t/T)."""

    loss_weighting: Literal["elbo", "inv_t", "none"] = "elbo"
    """Per-sequence weight w_t on the cross-entropy of the corrupted tokens at step t.

    elbo (default): T * (beta_t - beta_{t-1}) / beta_t, the discrete-time ELBO weight. With the
    linear schedule it is exactly T/t, i.e. LLaDA's 1/t on normalised time, and with the other
    schedule it keeps the loss an NLL bound, so one default serves both schedules.
    inv_t: T/t whatever the schedule (LLaDA's weight literally); none: 1 (plain masked-LM loss,
    lower variance, not a bound)."""

    loss_norm: Literal["tokens", "answer_length", "corrupted", "batch"] = "tokens"
    """How the weighted token losses of a batch become one number. The response (answer) covers
    the EOS padding after the answer (the SFT collator marks it as response), so padding EOS
    counts as answer tokens everywhere below.

    tokens (default): sum / response tokens in the batch. With elbo weighting this is an unbiased
    estimate of the per-token NLL bound (LLaDA pretraining, dllm's token normalisation).
    answer_length: per sequence, sum / that sequence's answer length, then the batch mean
    (LLaDA SFT: every example counts equally, whatever its length).
    corrupted: sum / corrupted tokens (the mean weighted CE per scored token; not a bound).
    batch: sum / batch size (the per-sequence NLL bound)."""

    eos_weight: float = 1.0
    """Weight of the response's EOS tokens (the answer's end and the padding after it) relative to
    the answer's own tokens, in the loss and in its normaliser (so the loss stays a weighted mean).

    1 (default) is LLaDA's SFT convention: padding counts as answer. A short answer padded to a
    fixed length (a classification label is one token and its EOS padding) is then mostly EOS,
    which every method learns in a few steps, so most of the loss, and of its gradient, says
    nothing about the label. A weight below 1 gives the answer's own tokens that share back.
    Training only: the ELBO used for scoring is unchanged."""

    min_one_corrupted: bool = True
    """In training, corrupt at least one response token of every sequence that has one: at small
    t a short answer would often draw no corruption and the example would be wasted. This biases
    the training estimate slightly; the ELBO (evaluation) always uses the exact q(x_t | x_0)."""

    def __post_init__(self) -> None:
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int):
            raise TypeError(f"num_steps must be an integer, got {self.num_steps!r}")
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        for name, allowed in (
            ("transition", TRANSITIONS),
            ("schedule", SCHEDULES),
            ("loss_weighting", LOSS_WEIGHTINGS),
            ("loss_norm", LOSS_NORMS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
        if isinstance(self.eos_weight, bool) or not isinstance(self.eos_weight, (int, float)):
            raise TypeError(f"eos_weight must be a number, got {self.eos_weight!r}")
        if not 0.0 <= self.eos_weight <= 1.0:
            raise ValueError(f"eos_weight must be in [0, 1], got {self.eos_weight}")
        if self.transition == "uniform" and self.loss_norm == "corrupted":
            raise ValueError(
                "loss_norm=corrupted needs transition=absorbing (under uniform corruption every "
                "response token is scored, as the model cannot tell which ones were replaced)"
            )
