"""The denoising loss (paper Eq. 8) with the LLaDA/dllm SFT conventions.

``-log p(x0 | x_t, t, c)`` on corrupted response positions only:

- prompt positions are never corrupted and never scored (their labels are excluded);
- the response covers the EOS padding after the answer (the SFT collator marks it as response),
  so the model learns where answers end, as in LLaDA SFT;
- a per-sequence step weight (``loss_weighting``: ELBO / 1/t / none) and a switchable
  normalisation (``loss_norm``), see :class:`~ldp.diffusion.config.DiffusionConfig`;
- absorbing transition: only [MASK]ed positions are scored (the others are given); uniform
  transition: every response token is scored (the model cannot tell which were replaced).

The output head over the full vocabulary dominates the cost of a step, so the head runs only on
the hidden states of scored positions (:func:`masked_positions_nll`): (N, d) -> (N, V) with N the
number of scored tokens, instead of (B, L, V).

Pieces, smallest first: :func:`masked_positions_nll` (H -> per-token CE), :func:`token_nll`
(x_t -> per-token CE through the model), :func:`reduce_loss` (normalisation),
:func:`diffusion_loss` (weighting + normalisation + stats; ``eos_weight`` shifts weight from
the EOS padding to the answer's own tokens, :func:`eos_token_weight`), :func:`training_loss`
(one draw of t and x_t for a batch, end to end; its stats split the CE into answer and EOS
padding, :func:`split_nll`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ldp.diffusion.config import DiffusionConfig
from ldp.diffusion.corruption import corrupt, sample_t
from ldp.diffusion.schedule import loss_weight
from ldp.errors import UsageError

__all__ = [
    "HiddenFn",
    "diffusion_loss",
    "eos_token_weight",
    "masked_positions_nll",
    "reduce_loss",
    "split_nll",
    "token_nll",
    "training_loss",
]

HiddenFn = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
"""``hidden_fn(x_t (B,L) long, t_norm (B,) float, attention_mask (B,L) | None) -> H (B,L,d)``:
replaces ``model.hidden_states`` (adapters use it to perturb H, or to bind per-batch context)."""


def masked_positions_nll(
    head: Callable[[torch.Tensor], torch.Tensor],
    hidden: torch.Tensor,
    x0: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of the clean tokens, with the head applied at ``positions`` only.

    head: (N, d) -> (N, V); hidden: (B, L, d); x0: (B, L) long; positions: (B, L) bool.
    Returns (B, L) float32, zero outside ``positions``. Differentiable in ``hidden``.
    """
    picked = hidden[positions]  # (N, d)
    logits = head(picked).float()  # (N, V)
    nll = F.cross_entropy(logits, x0[positions], reduction="none")  # (N,)
    out = torch.zeros(x0.shape, dtype=nll.dtype, device=nll.device)  # (B, L)
    return out.masked_scatter(positions, nll)


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
    """-log p(x0 | x_t, t) per token at ``positions``, through the model.

    x_t, x0: (B, L) long; t_norm: (B,) float = t/T; positions: (B, L) bool.
    Returns (B, L) float32, zero outside ``positions``. ``hidden_fn`` replaces
    ``model.hidden_states``; the head is ``model.head``, run at ``positions`` only.
    """
    hidden = (hidden_fn or model.hidden_states)(x_t, t_norm, attention_mask)  # (B, L, d)
    return masked_positions_nll(model.head, hidden, x0, positions)


def reduce_loss(
    weighted: torch.Tensor,
    response_mask: torch.Tensor,
    scored: torch.Tensor,
    norm: str,
    token_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Weighted token losses (B, L) -> scalar under normalisation ``norm``.

    response_mask, scored: (B, L) bool. ``token_weight`` (B, L) float, when given, is already
    inside ``weighted`` and makes each token count by its weight in the denominators too (a
    weighted mean; ``batch`` has no token count to weigh). Denominators are clamped so that an
    empty batch gives 0 rather than NaN. See ``DiffusionConfig.loss_norm`` for each norm.
    """
    response_mask = response_mask.bool()
    w = torch.ones_like(weighted) if token_weight is None else token_weight.to(weighted.dtype)
    if norm == "tokens":
        return weighted.sum() / (w * response_mask).sum().clamp_min(1e-6)
    if norm == "answer_length":
        per_seq = weighted.sum(dim=1) / (w * response_mask).sum(dim=1).clamp_min(1e-6)  # (B,)
        return per_seq.mean()
    if norm == "corrupted":
        return weighted.sum() / (w * scored.bool()).sum().clamp_min(1e-6)
    if norm == "batch":
        return weighted.sum() / weighted.shape[0]
    raise UsageError(
        f"unknown loss normalisation {norm!r} (tokens, answer_length, corrupted, batch)"
    )


def diffusion_loss(
    nll: torch.Tensor,
    t: torch.Tensor,
    response_mask: torch.Tensor,
    scored: torch.Tensor,
    config: DiffusionConfig,
    token_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weight per-token losses by step and normalise them (paper Eq. 8 as trained).

    nll: (B, L) float, zero outside ``scored``; t: (B,) long in 1..T; response_mask, scored:
    (B, L) bool; token_weight: optional (B, L) per-token weight (see :func:`reduce_loss`).
    Returns ``(loss, stats)``: the scalar loss, and stats ``denoising_loss`` (its value; a
    trainer may add regularisers to the loss), ``nll`` (unweighted mean CE per scored token),
    ``corrupted`` (scored tokens in the batch), ``t_mean`` (mean t/T).
    """
    T = config.num_steps
    w = loss_weight(t.cpu(), T, config.schedule, config.loss_weighting).to(nll.device)  # (B,)
    weighted = nll * w.unsqueeze(1)
    if token_weight is not None:
        weighted = weighted * token_weight
    loss = reduce_loss(weighted, response_mask, scored, config.loss_norm, token_weight)
    n_scored = int(scored.sum())
    stats = {
        "denoising_loss": float(loss.detach()),
        "nll": float(nll.detach().sum()) / max(n_scored, 1),
        "corrupted": float(n_scored),
        "t_mean": float(t.float().mean()) / T,
    }
    return loss, stats


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

    batch: ``input_ids`` (B, L) long clean tokens, ``response_mask`` (B, L) bool (answer + EOS
    padding), optional ``attention_mask`` (B, L). ``t`` (B,) long fixes the steps (drawn
    uniformly from 1..T otherwise). ``hidden_fn(x_t, t_norm, attention_mask) -> H`` replaces
    ``model.hidden_states`` (an adapter perturbing H). Returns ``(loss, stats)`` as
    :func:`diffusion_loss`.
    """
    for key in ("input_ids", "response_mask"):
        if key not in batch:
            raise UsageError(f"training_loss needs batch[{key!r}]")
    x0 = batch["input_ids"]
    response = batch["response_mask"].bool()
    attention_mask = batch.get("attention_mask")
    T = config.num_steps
    if t is None:
        t = sample_t(x0.shape[0], T, generator)
    t = t.to(x0.device)
    x_t, corrupted = corrupt(
        x0,
        t,
        response,
        num_steps=T,
        mask_token_id=model.mask_token_id,
        vocab_size=model.vocab_size,
        transition=config.transition,
        schedule=config.schedule,
        generator=generator,
        min_one=config.min_one_corrupted,
    )
    scored = corrupted if config.transition == "absorbing" else response
    nll = token_nll(
        model, x_t, t.float() / T, x0, scored, attention_mask=attention_mask, hidden_fn=hidden_fn
    )
    eos = getattr(model, "eos_token_id", None)
    token_weight = None
    if config.eos_weight != 1.0:
        if eos is None:
            raise UsageError("diffusion.eos_weight needs a model with an eos_token_id")
        token_weight = eos_token_weight(x0, response, eos, config.eos_weight)
    loss, stats = diffusion_loss(nll, t, response, scored, config, token_weight)
    if eos is not None:
        stats.update(split_nll(nll, x0, scored, eos))
    return loss, stats


def eos_token_weight(
    x0: torch.Tensor, response: torch.Tensor, eos_token_id: int, eos_weight: float
) -> torch.Tensor:
    """(B, L) float: ``eos_weight`` on the response's EOS tokens, 1 everywhere else."""
    weight = torch.ones(x0.shape, dtype=torch.float32, device=x0.device)
    return weight.masked_fill(response.bool() & (x0 == eos_token_id), float(eos_weight))


def split_nll(nll: torch.Tensor, x0: torch.Tensor, scored: torch.Tensor, eos_token_id: int) -> dict[str, float]:
    """Mean CE per scored token, split into the answer's own tokens and its EOS padding.

    A short answer padded to the task's length is mostly EOS, which every method learns in a few
    steps: a low ``nll`` can hide an answer that is not learned at all (``nll_answer`` stays at
    the label marginal's level). Returns ``nll_answer`` and ``nll_eos`` (0.0 where none is
    scored) and ``answer_tokens``, the scored answer tokens in the batch."""
    nll = nll.detach()
    eos = scored & (x0 == eos_token_id)
    answer = scored & ~eos
    n_answer, n_eos = int(answer.sum()), int(eos.sum())
    return {
        "nll_answer": float(nll[answer].sum()) / max(n_answer, 1),
        "nll_eos": float(nll[eos].sum()) / max(n_eos, 1),
        "answer_tokens": float(n_answer),
    }
