"""Monte-Carlo masked-diffusion ELBO: a per-sequence NLL upper bound and perplexity.

For the absorbing process, NLL(x0 | c) <= E_t[ w_t * sum_{masked} -log p(x0_l | x_t, t, c) ] with
t ~ U{1..T} and w_t = T (beta_t - beta_{t-1}) / beta_t (``schedule.elbo_weight``). We average
``n_samples`` draws, pairing t with T + 1 - t (antithetic) to reduce variance. For the uniform
process the same estimator is reported as a denoising NLL (not a bound).
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

__all__ = ["elbo_nll", "elbo_perplexity"]


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
    """Per-sequence NLL bound in nats over the response tokens: (B, L) -> (B,)."""
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    B = input_ids.shape[0]
    T = config.num_steps
    response = response_mask.bool()
    # Draw all steps first so that sample j and its antithetic partner share one generator state.
    if antithetic:
        draws = sample_t(B * n_samples, T, generator, antithetic=False).view(n_samples, B)
        half = (n_samples + 1) // 2
        draws = torch.cat([draws[:half], T + 1 - draws[:half]])[:n_samples]
    else:
        draws = sample_t(B * n_samples, T, generator).view(n_samples, B)
    total = torch.zeros(B)
    for j in range(n_samples):
        t = draws[j].to(input_ids.device)
        x_t, corrupted = corrupt(
            input_ids, t, response,
            num_steps=T, mask_token_id=model.mask_token_id, vocab_size=model.vocab_size,
            transition=config.transition, schedule=config.schedule, generator=generator,
            min_one=False,  # the bound needs the true q(x_t | x0)
        )
        scored = corrupted if config.transition == "absorbing" else response
        nll = token_nll(
            model, x_t, t.float() / T, input_ids, scored,
            attention_mask=attention_mask, hidden_fn=hidden_fn,
        )
        w = elbo_weight(t, T, config.schedule).to(nll.device)
        total += (nll.sum(dim=1) * w).float().cpu()
    return total / n_samples


def elbo_perplexity(
    model: Any,
    batches: Iterable[dict[str, torch.Tensor]],
    config: DiffusionConfig,
    *,
    n_samples: int = 4,
    generator: torch.Generator | None = None,
    hidden_fn_for: Callable[[dict[str, torch.Tensor]], HiddenFn | None] | None = None,
) -> float:
    """exp(total NLL bound / total response tokens) over ``batches``.

    Each batch holds ``input_ids`` and ``response_mask``; ``hidden_fn_for(batch)`` may supply a
    per-batch ``hidden_fn`` (an adapted model's per-batch context).
    """
    total_nll, total_tokens = 0.0, 0
    for batch in batches:
        hidden_fn = hidden_fn_for(batch) if hidden_fn_for is not None else None
        nll = elbo_nll(
            model, batch["input_ids"], batch["response_mask"], config,
            n_samples=n_samples, generator=generator, hidden_fn=hidden_fn,
            attention_mask=batch.get("attention_mask"),
        )
        total_nll += float(nll.sum())
        total_tokens += int(batch["response_mask"].sum())
    if total_tokens == 0:
        raise ValueError("no response tokens to score")
    return math.exp(total_nll / total_tokens)
