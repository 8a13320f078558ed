"""Monte-Carlo masked-diffusion ELBO: a per-sequence NLL upper bound and perplexity.

Absorbing process: NLL(x0 | c) <= T * E_{t ~ U{1..T}} E_{x_t ~ q}[ w_t * sum_{masked l}
-log p(x0_l | x_t, t, c) ] / T with w_t = T (beta_t - beta_{t-1}) / beta_t
(:func:`~ldp.diffusion.schedule.elbo_weight`), taken over response positions only (the prompt is
the condition c). We average ``n_samples`` draws of (t, x_t) per sequence; with ``antithetic``
the draws come in pairs t, T + 1 - t (one low-noise and one high-noise draw), which lowers the
variance. x_t is drawn from the exact q(x_t | x0) (no forced corruption).

Uniform process: the same estimator scores every response token and is reported as a denoising
NLL; it is not a bound for that process.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ldp.diffusion.config import DiffusionConfig
from ldp.diffusion.corruption import corrupt, sample_t
from ldp.diffusion.loss import HiddenFn, token_nll
from ldp.diffusion.schedule import elbo_weight
from ldp.errors import UsageError

__all__ = ["elbo_nll", "elbo_perplexity", "elbo_steps", "perplexity"]


def elbo_steps(
    n_samples: int,
    batch_size: int,
    num_steps: int,
    generator: torch.Generator | None = None,
    *,
    antithetic: bool = True,
) -> torch.Tensor:
    """Steps for the Monte-Carlo draws: () -> (n_samples, B) long in 1..T.

    With ``antithetic``, draw j + ceil(n/2) is T + 1 - (draw j) for every sequence.
    """
    if n_samples < 1:
        raise UsageError(f"n_samples must be >= 1, got {n_samples}")
    t = sample_t(n_samples * batch_size, num_steps, generator).view(n_samples, batch_size)
    if antithetic:
        half = (n_samples + 1) // 2
        t = torch.cat([t[:half], num_steps + 1 - t[:half]])[:n_samples]
    return t


@torch.no_grad()
def elbo_nll(
    model: Any,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    config: DiffusionConfig,
    *,
    n_samples: int = 4,
    antithetic: bool = True,
    generator: torch.Generator | None = None,
    hidden_fn: HiddenFn | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-sequence NLL upper bound in nats over the response tokens: (B, L) -> (B,) float (CPU).

    input_ids: (B, L) long clean tokens; response_mask: (B, L) bool. ``hidden_fn`` replaces
    ``model.hidden_states`` (an adapted model, per-batch context).
    """
    if input_ids.dim() != 2 or response_mask.shape != input_ids.shape:
        raise UsageError(
            f"elbo_nll expects input_ids and response_mask of one (B, L) shape, got "
            f"{tuple(input_ids.shape)} and {tuple(response_mask.shape)}"
        )
    B, T = input_ids.shape[0], config.num_steps
    response = response_mask.bool()
    draws = elbo_steps(n_samples, B, T, generator, antithetic=antithetic)  # (n, B)
    total = torch.zeros(B, dtype=torch.float64)
    for t in draws:
        t = t.to(input_ids.device)  # (B,)
        x_t, corrupted = corrupt(
            input_ids,
            t,
            response,
            num_steps=T,
            mask_token_id=model.mask_token_id,
            vocab_size=model.vocab_size,
            transition=config.transition,
            schedule=config.schedule,
            generator=generator,
            min_one=False,  # the bound needs the exact q(x_t | x0)
        )
        scored = corrupted if config.transition == "absorbing" else response
        nll = token_nll(
            model,
            x_t,
            t.float() / T,
            input_ids,
            scored,
            attention_mask=attention_mask,
            hidden_fn=hidden_fn,
        )  # (B, L)
        w = elbo_weight(t.cpu(), T, config.schedule).double()  # (B,)
        total += nll.sum(dim=1).double().cpu() * w
    return (total / n_samples).float()


def perplexity(
    model: Any,
    batches: Iterable[dict[str, torch.Tensor]],
    config: DiffusionConfig,
    *,
    n_samples: int = 4,
    antithetic: bool = True,
    generator: torch.Generator | None = None,
    hidden_fn_for: Callable[[dict[str, torch.Tensor]], HiddenFn | None] | None = None,
) -> float:
    """exp(total ELBO NLL / total response tokens) over ``batches`` (an upper bound on the
    true perplexity for the absorbing process).

    Each batch holds ``input_ids`` and ``response_mask`` (optionally ``attention_mask``);
    ``hidden_fn_for(batch)`` may supply a per-batch ``hidden_fn`` (an adapted model's context).
    """
    total_nll, total_tokens = 0.0, 0
    for batch in batches:
        hidden_fn = hidden_fn_for(batch) if hidden_fn_for is not None else None
        nll = elbo_nll(
            model,
            batch["input_ids"],
            batch["response_mask"],
            config,
            n_samples=n_samples,
            antithetic=antithetic,
            generator=generator,
            hidden_fn=hidden_fn,
            attention_mask=batch.get("attention_mask"),
        )
        total_nll += float(nll.double().sum())
        total_tokens += int(batch["response_mask"].bool().sum())
    if total_tokens == 0:
        raise UsageError("perplexity: the batches hold no response tokens to score")
    return math.exp(total_nll / total_tokens)


elbo_perplexity = perplexity
"""The same function under the name the recipes import."""
