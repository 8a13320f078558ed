"""Forward corruption q(x_t | x_0): only response positions are ever corrupted."""

from __future__ import annotations

import torch

from ldp.diffusion.schedule import corruption_prob

__all__ = ["sample_t", "corrupt"]


def sample_t(
    batch_size: int,
    num_steps: int,
    generator: torch.Generator | None = None,
    *,
    antithetic: bool = False,
) -> torch.Tensor:
    """Integer diffusion steps t ~ U{1..T}: () -> (B,) long.

    ``antithetic`` pairs each draw t with T + 1 - t (the second half mirrors the first), which
    lowers the variance of Monte-Carlo estimates over t.
    """
    if not antithetic:
        return torch.randint(1, num_steps + 1, (batch_size,), generator=generator)
    half = (batch_size + 1) // 2
    first = torch.randint(1, num_steps + 1, (half,), generator=generator)
    return torch.cat([first, num_steps + 1 - first])[:batch_size]


def corrupt(
    x0: torch.Tensor,
    t: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    num_steps: int,
    mask_token_id: int,
    vocab_size: int,
    transition: str = "absorbing",
    schedule: str = "linear",
    generator: torch.Generator | None = None,
    min_one: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample x_t ~ q(x_t | x_0) at steps ``t``.

    x0: (B, L) long; t: (B,) long in 1..T; response_mask: (B, L) bool.
    Returns ``(x_t, corrupted)``, both (B, L); ``corrupted`` marks the positions whose token was
    replaced ([MASK] for absorbing, a uniform random token for uniform). Positions outside
    ``response_mask`` (the prompt) are never touched. With ``min_one`` every sequence that has
    response tokens gets at least one corrupted position.
    """
    response_mask = response_mask.bool()
    beta = corruption_prob(t, num_steps, schedule).to(x0.device).unsqueeze(1)  # (B, 1)
    draw = torch.rand(x0.shape, generator=generator).to(x0.device)
    corrupted = (draw < beta) & response_mask
    if min_one:
        none = ~corrupted.any(dim=1) & response_mask.any(dim=1)
        if none.any():
            # Force the response position with the smallest draw (a uniform random choice).
            scores = draw.masked_fill(~response_mask, 2.0)
            pick = scores.argmin(dim=1)
            forced = torch.zeros_like(corrupted)
            forced[torch.arange(x0.shape[0]), pick] = True
            corrupted = corrupted | (forced & none.unsqueeze(1))
    if transition == "absorbing":
        x_t = x0.masked_fill(corrupted, mask_token_id)
    elif transition == "uniform":
        noise = torch.randint(0, vocab_size, x0.shape, generator=generator).to(x0.device)
        # Never draw [MASK] itself: it is not part of the uniform process's vocabulary.
        noise = torch.where(noise == mask_token_id, (noise + 1) % vocab_size, noise)
        x_t = torch.where(corrupted, noise, x0)
    else:
        raise ValueError(f"unknown transition {transition!r} (absorbing, uniform)")
    return x_t, corrupted
