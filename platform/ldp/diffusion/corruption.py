"""Forward corruption q(x_t | x_0): only response positions are ever corrupted.

Random numbers are drawn on the generator's device (CPU unless the caller passes a CUDA
generator) and then moved to the data's device, so a seed gives the same corruption everywhere.
"""

from __future__ import annotations

import torch

from ldp.diffusion.schedule import corruption_prob
from ldp.errors import UsageError

__all__ = ["corrupt", "sample_t", "uniform_noise"]


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def sample_t(
    batch_size: int,
    num_steps: int,
    generator: torch.Generator | None = None,
    *,
    antithetic: bool = False,
) -> torch.Tensor:
    """Integer diffusion steps t ~ U{1..T}: () -> (B,) long (on CPU).

    ``antithetic`` pairs the draws: the second half of the batch is T + 1 - t of the first half
    (an odd batch keeps one unpaired draw), which lowers the variance of averages over t.
    """
    if batch_size < 1 or num_steps < 1:
        raise UsageError(
            f"sample_t needs batch_size >= 1 and num_steps >= 1, got {batch_size}, {num_steps}"
        )
    n = (batch_size + 1) // 2 if antithetic else batch_size
    t = torch.randint(1, num_steps + 1, (n,), generator=generator, device=_gen_device(generator))
    if antithetic:
        t = torch.cat([t, num_steps + 1 - t])[:batch_size]
    return t.cpu()


def uniform_noise(
    shape: tuple[int, ...],
    vocab_size: int,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Tokens drawn uniformly from the vocabulary without [MASK]: () -> ``shape`` long (CPU).

    [MASK] is not a state of the uniform process; every other id has probability 1 / (V - 1).
    """
    noise = torch.randint(
        0, vocab_size - 1, shape, generator=generator, device=_gen_device(generator)
    )
    return (noise + (noise >= mask_token_id).long()).cpu()  # skip over the mask id


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
    """Sample x_t ~ q(x_t | x_0) at integer steps ``t``.

    x0: (B, L) long; t: (B,) long in 1..T; response_mask: (B, L) bool (the answer, EOS padding
    included). Returns ``(x_t, corrupted)``, both (B, L): each response token is independently
    corrupted with probability beta_t, i.e. replaced by [MASK] (absorbing) or by a uniform random
    non-[MASK] token (uniform, which may redraw the same token). ``corrupted`` marks the replaced
    positions. Positions outside ``response_mask`` (the prompt) are never touched.

    ``min_one``: a sequence that has response tokens but drew no corruption gets one, at a
    uniformly chosen response position (training only: this departs from the exact q).
    """
    if x0.dim() != 2 or response_mask.shape != x0.shape:
        raise UsageError(
            f"corrupt expects x0 and response_mask of one (B, L) shape, got "
            f"{tuple(x0.shape)} and {tuple(response_mask.shape)}"
        )
    if t.shape != (x0.shape[0],):
        raise UsageError(f"corrupt expects t of shape ({x0.shape[0]},), got {tuple(t.shape)}")
    if transition not in ("absorbing", "uniform"):
        raise UsageError(f"unknown transition {transition!r} (absorbing, uniform)")
    device = x0.device
    response = response_mask.bool()
    beta = corruption_prob(t.cpu(), num_steps, schedule).to(device).unsqueeze(1)  # (B, 1)
    draw = torch.rand(x0.shape, generator=generator, device=_gen_device(generator)).to(device)
    corrupted = (draw < beta) & response  # (B, L)
    if min_one:
        missing = ~corrupted.any(dim=1) & response.any(dim=1)  # (B,)
        if missing.any():
            # The response position with the smallest draw is a uniform choice among them.
            pick = draw.masked_fill(~response, 2.0).argmin(dim=1)  # (B,)
            forced = torch.zeros_like(corrupted)
            forced[torch.arange(x0.shape[0], device=device), pick] = True
            corrupted = corrupted | (forced & missing.unsqueeze(1))
    if transition == "absorbing":
        x_t = x0.masked_fill(corrupted, mask_token_id)
    else:
        noise = uniform_noise(tuple(x0.shape), vocab_size, mask_token_id, generator).to(device)
        x_t = torch.where(corrupted, noise.to(x0.dtype), x0)
    return x_t, corrupted
