"""Reverse process: generate a response after a fixed prompt, running t = T..1.

Absorbing transition (the default). The response starts all [MASK]. ``steps`` sampling steps
(default T) are evenly spaced in normalised time, t_k = k / S for k = S..1. Going from t to
s < t, the denoiser predicts x0 at every still-masked position (argmax at temperature 0,
Gumbel-max on logits / temperature otherwise; the [MASK] logit is removed, so [MASK] is never
predicted) and positions are revealed:

- ``remasking="random"``: each still-masked position is revealed with the reverse-posterior
  probability (beta_t - beta_s) / beta_t, independently;
- ``remasking="low_confidence"`` (LLaDA's default): a deterministic count is revealed, the
  positions whose predicted token has the highest probability. The count keeps the expected
  schedule: after the step, round(W * beta_s) positions of the W in the block stay masked (for
  the linear schedule an even split of W over the steps, as LLaDA's ``get_num_transfer_tokens``).

Revealed tokens stay fixed, the prompt never changes, and the last step (s = 0) reveals all that
is left, so no [MASK] remains. ``block_length`` splits the response into blocks generated left to
right (LLaDA's semi-autoregressive sampling), ``steps // n_blocks`` steps each; the time given to
the model is then the block's own t_k (the fraction of the block still masked, in expectation).

Uniform transition (a simple predict-and-renoise sampler). The response starts as uniform noise;
at each step every response position of the block gets the predicted x0, and then, except at
the last step, is re-corrupted with a fresh uniform token with probability beta_s (the forward
marginal at the next time). ``remasking`` has no meaning here and is ignored.

Efficiency: the full-vocabulary head runs only at the positions being predicted (the masked
positions of the current block) unless ``logits_fn`` is given, which returns full logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ldp.diffusion.config import DiffusionConfig
from ldp.diffusion.corruption import uniform_noise
from ldp.diffusion.loss import HiddenFn
from ldp.diffusion.schedule import corruption_prob
from ldp.errors import UsageError

__all__ = ["LogitsFn", "draw_tokens", "reveal_count", "sample"]

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``logits_fn(x (B,L) long, t_norm (B,) float) -> logits (B,L,V)``; overrides the model."""


def draw_tokens(
    logits: torch.Tensor,
    temperature: float,
    mask_token_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted tokens and their probability: (N, V) logits -> (N,) long, (N,) float.

    [MASK] is never chosen. Temperature 0 takes the argmax; otherwise Gumbel-max on
    logits / temperature (an exact draw from softmax(logits / temperature)). The confidence is
    the chosen token's probability under softmax(logits) (untempered), as in LLaDA.
    """
    logits = logits.float().index_fill(
        -1, torch.tensor([mask_token_id], device=logits.device), float("-inf")
    )
    if temperature > 0:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        u = torch.rand(logits.shape, generator=generator, device=gen_device).to(logits.device)
        gumbel = -torch.log(-torch.log(u.clamp_(1e-20, 1.0 - 1e-7)))
        tokens = (logits / temperature + gumbel).argmax(dim=-1)
    else:
        tokens = logits.argmax(dim=-1)
    conf = torch.softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return tokens, conf


def reveal_count(
    block_width: int, masked_now: torch.Tensor, s: float, schedule: str
) -> torch.Tensor:
    """Positions to reveal at a low-confidence step ending at normalised time ``s``.

    masked_now: (B,) long still-masked counts in the block -> (B,) long: enough to leave
    round(block_width * beta_s) masked (all of them at s = 0).
    """
    keep = round(block_width * float(corruption_prob(s, 1, schedule)))
    return (masked_now - keep).clamp_min(0)


def _top_k_mask(score: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """(B, W) scores, (B,) counts -> (B, W) bool marking each row's ``k`` highest scores."""
    order = score.argsort(dim=1, descending=True)  # (B, W)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    return rank < k.unsqueeze(1)


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
    hidden_fn: HiddenFn | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Generate ``gen_length`` tokens after each prompt: (B, Lp) long -> (B, Lp + gen_length).

    ``steps``: sampling steps in all (default T), split evenly over the blocks (the remainder is
    dropped). ``seed`` (default 0) or ``generator`` fixes the randomness. The model is called as
    ``logits_fn(x, t_norm)`` if given, else ``model.head`` on ``hidden_fn(x, t_norm,
    attention_mask)`` (default ``model.hidden_states``) at the predicted positions only.
    ``attention_mask``: (B, Lp) for the prompt (generated positions are attended) or
    (B, Lp + gen_length); None attends everywhere.
    """
    if prompt_ids.dim() != 2:
        raise UsageError(f"prompt_ids must be (B, Lp), got shape {tuple(prompt_ids.shape)}")
    if gen_length < 1:
        raise UsageError(f"gen_length must be >= 1, got {gen_length}")
    if remasking not in ("random", "low_confidence"):
        raise UsageError(f"unknown remasking {remasking!r} (random, low_confidence)")
    if temperature < 0:
        raise UsageError(f"temperature must be >= 0, got {temperature}")
    if seed is not None and generator is not None:
        raise UsageError("pass seed or generator to sample, not both")
    block_length = block_length or gen_length
    if block_length < 1 or gen_length % block_length:
        raise UsageError(
            f"gen_length {gen_length} is not a multiple of block_length {block_length}"
        )
    n_blocks = gen_length // block_length
    steps = steps or config.num_steps
    if steps < n_blocks:
        raise UsageError(f"steps ({steps}) must be at least the number of blocks ({n_blocks})")
    steps_per_block = steps // n_blocks
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)

    B, Lp = prompt_ids.shape
    device = prompt_ids.device
    mask_id = model.mask_token_id
    attn = _full_attention_mask(attention_mask, B, Lp, gen_length, device)

    def rand(shape: tuple[int, ...]) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=generator.device).to(device)

    def predict(x: torch.Tensor, t: float, lo: int, hi: int, where: torch.Tensor):
        """Tokens and confidences (N,) at the ``where`` (B, hi - lo) positions of the window."""
        t_norm = torch.full((B,), t, device=device)
        if logits_fn is not None:
            logits = logits_fn(x, t_norm)[:, lo:hi][where]  # (N, V)
        else:
            hidden = (hidden_fn or model.hidden_states)(x, t_norm, attn)  # (B, L, d)
            logits = model.head(hidden[:, lo:hi][where])  # (N, V)
        return draw_tokens(logits, temperature, mask_id, generator)

    uniform = config.transition == "uniform"
    if uniform:
        start = uniform_noise((B, gen_length), model.vocab_size, mask_id, generator).to(device)
    else:
        start = torch.full((B, gen_length), mask_id, device=device)
    x = torch.cat([prompt_ids, start.to(prompt_ids.dtype)], dim=1)  # (B, Lp + G)

    for b in range(n_blocks):
        lo, hi = Lp + b * block_length, Lp + (b + 1) * block_length
        for k in range(steps_per_block, 0, -1):
            t, s = k / steps_per_block, (k - 1) / steps_per_block
            window = x[:, lo:hi]  # (B, W), a view
            if uniform:
                every = torch.ones_like(window, dtype=torch.bool)
                tokens, _ = predict(x, t, lo, hi, every)
                pred = tokens.view(B, block_length).to(x.dtype)
                if k > 1:
                    beta_s = float(corruption_prob(s, 1, config.schedule))
                    noise = uniform_noise((B, block_length), model.vocab_size, mask_id, generator)
                    pred = torch.where(
                        rand((B, block_length)) < beta_s, noise.to(device, x.dtype), pred
                    )
                x[:, lo:hi] = pred
                continue
            masked = window == mask_id  # (B, W)
            if not masked.any():
                break  # block finished early (random remasking)
            tokens, conf = predict(x, t, lo, hi, masked)  # (N,), (N,)
            if k == 1:
                reveal = masked
            elif remasking == "random":
                beta_t = float(corruption_prob(t, 1, config.schedule))
                beta_s = float(corruption_prob(s, 1, config.schedule))
                reveal = masked & (rand(tuple(masked.shape)) < (beta_t - beta_s) / beta_t)
            else:
                score = torch.full(masked.shape, -1.0, device=device).masked_scatter(masked, conf)
                n = reveal_count(block_length, masked.sum(dim=1), s, config.schedule)
                reveal = masked & _top_k_mask(score, n)
            proposal = window.masked_scatter(masked, tokens.to(x.dtype))  # (B, W)
            x[:, lo:hi] = torch.where(reveal, proposal, window)
    return x


def _full_attention_mask(
    attention_mask: torch.Tensor | None, B: int, Lp: int, gen_length: int, device: torch.device
) -> torch.Tensor | None:
    """(B, Lp) or (B, Lp + G) or None -> (B, Lp + G) or None (generated positions attended)."""
    if attention_mask is None:
        return None
    if attention_mask.shape == (B, Lp):
        ones = torch.ones(B, gen_length, dtype=attention_mask.dtype, device=device)
        return torch.cat([attention_mask.to(device), ones], dim=1)
    if attention_mask.shape == (B, Lp + gen_length):
        return attention_mask.to(device)
    raise UsageError(
        f"attention_mask must be (B, Lp) or (B, Lp + gen_length), got {tuple(attention_mask.shape)}"
    )
