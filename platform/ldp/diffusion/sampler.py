"""Reverse process: generate a response given a fixed prompt, running t = T..1.

Absorbing process. The response starts fully masked. Going from normalised time t to s < t, each
still-masked position is revealed with the reverse-posterior probability
(beta_t - beta_s) / beta_t, with the token drawn from the denoiser's p(x0 | x_t) (argmax at
temperature 0, Gumbel-max otherwise); revealed tokens stay fixed and the prompt never changes.
``remasking="low_confidence"`` reveals the same expected number of positions, but picks the ones
the model is most confident about (LLaDA). ``block_length`` runs the schedule block by block,
left to right (LLaDA's semi-autoregressive sampling). At the last step everything left is
revealed, so no [MASK] remains.

Uniform process: start from uniform noise; at each step predict x0 and re-corrupt it to the next
time's noise level (predict-and-renoise); the last step keeps the prediction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldp.diffusion.config import DiffusionConfig
from ldp.diffusion.schedule import corruption_prob

__all__ = ["sample", "LogitsFn"]

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``logits_fn(x (B,L), t_norm (B,)) -> logits (B,L,V)``; defaults to ``model(x, t_norm)``."""


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None):
    """Token choice and its probability: (B, L, V) -> (B, L) long, (B, L) float."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    if temperature > 0:
        u = torch.rand(logits.shape, generator=generator).to(logits.device).clamp_(1e-10, 1.0)
        gumbel = -torch.log(-torch.log(u))
        tokens = (logits / temperature + gumbel).argmax(dim=-1)
    else:
        tokens = logits.argmax(dim=-1)
    conf = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, conf


@torch.no_grad()
def sample(
    model: Any,
    prompt_ids: torch.Tensor,
    gen_length: int,
    config: DiffusionConfig,
    *,
    steps: int | None = None,
    temperature: float = 0.0,
    remasking: str = "low_confidence",
    block_length: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    logits_fn: LogitsFn | None = None,
) -> torch.Tensor:
    """Generate ``gen_length`` tokens after each prompt.

    prompt_ids: (B, Lp) long -> (B, Lp + gen_length) long. ``steps`` sampling steps in total
    (default T), split evenly across blocks when ``block_length`` is set.
    """
    if gen_length < 1:
        raise ValueError("gen_length must be >= 1")
    if remasking not in ("random", "low_confidence"):
        raise ValueError(f"unknown remasking {remasking!r} (random, low_confidence)")
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else 0)
    steps = steps or config.num_steps
    block_length = block_length or gen_length
    if gen_length % block_length:
        raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
    n_blocks = gen_length // block_length
    if steps < n_blocks:
        raise ValueError(f"{steps} steps are fewer than {n_blocks} blocks")
    steps_per_block = steps // n_blocks

    B, Lp = prompt_ids.shape
    device = prompt_ids.device
    mask_id = model.mask_token_id
    call = logits_fn or (lambda x, t: model(x, t))

    if config.transition == "uniform":
        return _sample_uniform(model, call, prompt_ids, gen_length, config, steps, temperature, generator)

    x = torch.cat([prompt_ids, torch.full((B, gen_length), mask_id, dtype=prompt_ids.dtype, device=device)], 1)
    for b in range(n_blocks):
        lo, hi = Lp + b * block_length, Lp + (b + 1) * block_length
        for k in range(steps_per_block, 0, -1):
            t, s = k / steps_per_block, (k - 1) / steps_per_block
            beta_t = float(corruption_prob(t, 1, config.schedule))
            beta_s = float(corruption_prob(s, 1, config.schedule))
            reveal_p = 1.0 if k == 1 else (beta_t - beta_s) / max(beta_t, 1e-12)
            masked = x == mask_id
            masked[:, :lo] = False
            masked[:, hi:] = False
            if not masked.any():
                continue
            logits = call(x, torch.full((B,), t, device=device))
            logits[..., mask_id] = float("-inf")  # never predict [MASK] itself
            tokens, conf = _draw(logits, temperature, generator)
            if remasking == "random" or k == 1:
                draw = torch.rand(x.shape, generator=generator).to(device)
                reveal = masked & (draw < reveal_p)
            else:
                counts = masked.sum(dim=1)
                n_reveal = torch.round(counts.float() * reveal_p).long()
                score = conf.masked_fill(~masked, -1.0)
                order = score.argsort(dim=1, descending=True)
                rank = torch.empty_like(order)
                rank.scatter_(1, order, torch.arange(x.shape[1], device=device).expand(B, -1))
                reveal = masked & (rank < n_reveal.unsqueeze(1))
            x = torch.where(reveal, tokens, x)
    return x


def _sample_uniform(model, call, prompt_ids, gen_length, config, steps, temperature, generator):
    B, Lp = prompt_ids.shape
    device = prompt_ids.device
    V = model.vocab_size
    noise = torch.randint(0, V, (B, gen_length), generator=generator).to(device)
    x = torch.cat([prompt_ids, noise], 1)
    for k in range(steps, 0, -1):
        t, s = k / steps, (k - 1) / steps
        logits = call(x, torch.full((B,), t, device=device))
        logits[..., model.mask_token_id] = float("-inf")
        tokens, _ = _draw(logits, temperature, generator)
        pred = tokens[:, Lp:]
        if k == 1:
            x[:, Lp:] = pred
            break
        beta_s = float(corruption_prob(s, 1, config.schedule))
        renoise = torch.rand(pred.shape, generator=generator).to(device) < beta_s
        fresh = torch.randint(0, V, pred.shape, generator=generator).to(device)
        x[:, Lp:] = torch.where(renoise, fresh, pred)
    return x
