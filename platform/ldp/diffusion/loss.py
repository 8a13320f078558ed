"""The denoising loss (paper Eq. 8) with the LLaDA/dllm SFT conventions.

``-log p(x0 | x_t, t, c)`` on corrupted response positions only: prompt positions are never
corrupted and never scored; EOS padding after the answer is part of the response (the collator
marks it so) and is trained; a per-step weight (ELBO / 1/t / none) and a switchable
normalisation (see :class:`DiffusionConfig`).

The output head over the full vocabulary dominates the cost of a step, so logits are computed
only at the positions that are scored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ldp.diffusion.config import DiffusionConfig
from ldp.diffusion.corruption import corrupt, sample_t
from ldp.diffusion.schedule import loss_weight

__all__ = ["HiddenFn", "token_nll", "reduce_loss", "training_loss"]

HiddenFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""``hidden_fn(x_t (B,L), t_norm (B,), attention_mask) -> H (B,L,d)``: replaces
``model.hidden_states`` (adapters use it to perturb H, or to bind per-batch context)."""


def token_nll(
    model: Any,
    x_t: torch.Tensor,
    t_norm: torch.Tensor,
    x0: torch.Tensor,
    positions: torch.Tensor,
    *,
    attention_mask: torch.Tensor | None = None,
    hidden_fn: HiddenFn | None = None,
) -> torch.Tensor:
    """Cross-entropy of the clean tokens at ``positions``.

    x_t, x0: (B, L) long; t_norm: (B,) float = t/T; positions: (B, L) bool.
    Returns (B, L) float, zero outside ``positions``; logits are computed at ``positions`` only.
    """
    hidden = (hidden_fn or model.hidden_states)(x_t, t_norm, attention_mask)  # (B, L, d)
    picked = hidden[positions]  # (N, d)
    logits = model.head(picked).float()  # (N, V)
    nll = F.cross_entropy(logits, x0[positions], reduction="none")  # (N,)
    out = torch.zeros(x0.shape, dtype=nll.dtype, device=nll.device)
    out[positions] = nll
    return out


def reduce_loss(
    weighted: torch.Tensor, response_mask: torch.Tensor, scored: torch.Tensor, norm: str
) -> torch.Tensor:
    """Weighted token losses (B, L) -> scalar under normalisation ``norm``."""
    total = weighted.sum()
    if norm == "tokens":
        return total / response_mask.sum().clamp_min(1)
    if norm == "sequence":
        per_seq = weighted.sum(dim=1) / response_mask.sum(dim=1).clamp_min(1)
        return per_seq.mean()
    if norm == "corrupted":
        return total / scored.sum().clamp_min(1)
    if norm == "batch":
        return total / weighted.shape[0]
    raise ValueError(f"unknown loss normalisation {norm!r}")


def training_loss(
    model: Any,
    batch: dict[str, torch.Tensor],
    config: DiffusionConfig,
    *,
    generator: torch.Generator | None = None,
    hidden_fn: HiddenFn | None = None,
    t: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One Monte-Carlo draw of the diffusion loss for ``batch``.

    batch: ``input_ids`` (B, L) long clean tokens, ``response_mask`` (B, L) bool, optional
    ``attention_mask``. ``t`` (B,) long fixes the steps (drawn uniformly otherwise).
    Returns ``(loss, stats)`` with stats: ``nll`` (unweighted mean CE per scored token),
    ``corrupted`` (scored tokens), ``t_mean`` (mean t/T).
    """
    x0 = batch["input_ids"]
    response = batch["response_mask"].bool()
    attention_mask = batch.get("attention_mask")
    T = config.num_steps
    if t is None:
        t = sample_t(x0.shape[0], T, generator)
    t = t.to(x0.device)
    x_t, corrupted = corrupt(
        x0, t, response,
        num_steps=T, mask_token_id=model.mask_token_id, vocab_size=model.vocab_size,
        transition=config.transition, schedule=config.schedule, generator=generator,
        min_one=config.min_one_corrupted,
    )
    # Absorbing: only [MASK]ed tokens carry information to learn. Uniform: the model cannot tell
    # which tokens were replaced, so every response token is scored.
    scored = corrupted if config.transition == "absorbing" else response
    t_norm = t.float() / T
    nll = token_nll(model, x_t, t_norm, x0, scored, attention_mask=attention_mask, hidden_fn=hidden_fn)
    w = loss_weight(t, T, config.schedule, config.loss_weighting).to(nll.device).unsqueeze(1)
    loss = reduce_loss(nll * w, response, scored, config.loss_norm)
    n_scored = scored.sum()
    stats = {
        "nll": float(nll.detach().sum() / n_scored.clamp_min(1)),
        "corrupted": float(n_scored),
        "t_mean": float(t_norm.mean()),
    }
    return loss, stats
