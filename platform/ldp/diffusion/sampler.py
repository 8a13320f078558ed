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
- ``threshold=c`` (parallel decoding by confidence, as Fast-dLLM): every masked position of the
  block whose predicted token has probability >= c is revealed, and at least the most confident
  one, so each row's block finishes in 1..W steps depending on how sure the model is; ``steps``
  is then not a count but is ignored. The time given to the model is the fraction of the row's
  block still masked.

Revealed tokens stay fixed, the prompt never changes, and the last step (s = 0) reveals all that
is left, so no [MASK] remains. ``block_length`` splits the response into blocks generated left to
right (LLaDA's semi-autoregressive sampling), ``steps // n_blocks`` steps each; the time given to
the model is then the block's own t_k (the fraction of the block still masked, in expectation).

Uniform transition (a simple predict-and-renoise sampler). The response starts as uniform noise;
at each step every response position of the block gets the predicted x0, and then, except at
the last step, is re-corrupted with a fresh uniform token with probability beta_s (the forward
marginal at the next time). ``remasking`` and ``threshold`` have no meaning here.

Efficiency: the full-vocabulary head runs only at the positions being predicted (the masked
positions of the current block) unless ``logits_fn`` is given, which returns full logits.

``on_step(step, x)`` (optional) sees the whole sequence (B, Lp + G) after every denoising step
(``step`` counts from 1): a server streams the partially revealed answer from it.

:mod:`ldp.diffusion.rows` runs the same steps for a batch of independent rows, each with its own
prompt and answer length, step count, temperature and seed (a serving batch).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ldp.diffusion.config import DiffusionConfig
from ldp.diffusion.corruption import uniform_noise
from ldp.diffusion.loss import HiddenFn
from ldp.diffusion.schedule import corruption_prob
from ldp.errors import UsageError

__all__ = [
    "LogitsFn",
    "StepFn",
    "draw_tokens",
    "reveal_above_threshold",
    "reveal_count",
    "reveal_low_confidence",
    "sample",
]

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``logits_fn(x (B,L) long, t_norm (B,) float) -> logits (B,L,V)``; overrides the model."""

StepFn = Callable[[int, torch.Tensor], None]
"""``on_step(step, x (B, Lp + G))``: called after every denoising step, ``step`` from 1."""


# --------------------------------------------------------------------------- one step's parts


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


def _scores(masked: torch.Tensor, conf: torch.Tensor) -> torch.Tensor:
    """(B, W) masked, (N,) confidences at the masked positions -> (B, W), -1 where revealed."""
    return torch.full(masked.shape, -1.0, device=masked.device).masked_scatter(masked, conf)


def reveal_low_confidence(
    masked: torch.Tensor, conf: torch.Tensor, s: float, schedule: str
) -> torch.Tensor:
    """(B, W) masked, (N,) confidences -> (B, W) bool: the most confident positions, as many
    as :func:`reveal_count` asks for a step ending at ``s``."""
    n = reveal_count(masked.shape[1], masked.sum(dim=1), s, schedule)
    return masked & _top_k_mask(_scores(masked, conf), n)


def reveal_above_threshold(
    masked: torch.Tensor, conf: torch.Tensor, threshold: float
) -> torch.Tensor:
    """(B, W) masked, (N,) confidences -> (B, W) bool: every masked position whose confidence
    is >= ``threshold``, and in every row that still has a masked position at least its most
    confident one (so each step makes progress)."""
    score = _scores(masked, conf)
    best = _top_k_mask(score, masked.any(dim=1).long())
    return masked & ((score >= threshold) | best)


def _reveal_random(
    masked: torch.Tensor, t: float, s: float, schedule: str, rand: Callable
) -> torch.Tensor:
    """(B, W) masked -> (B, W) bool: each revealed with probability (beta_t - beta_s) / beta_t."""
    beta_t = float(corruption_prob(t, 1, schedule))
    beta_s = float(corruption_prob(s, 1, schedule))
    return masked & (rand(tuple(masked.shape)) < (beta_t - beta_s) / beta_t)


# --------------------------------------------------------------------------- one run


@dataclass
class _Run:
    """What every step of one :func:`sample` call shares."""

    model: Any
    config: DiffusionConfig
    B: int
    device: torch.device
    mask_id: int
    attn: torch.Tensor | None
    temperature: float
    generator: torch.Generator
    logits_fn: LogitsFn | None
    hidden_fn: HiddenFn | None

    def rand(self, shape: tuple[int, ...]) -> torch.Tensor:
        g = self.generator
        return torch.rand(shape, generator=g, device=g.device).to(self.device)

    def predict(
        self, x: torch.Tensor, t_norm: torch.Tensor, lo: int, hi: int, where: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens and confidences (N,) at the ``where`` (B, hi - lo) positions of the window."""
        if self.logits_fn is not None:
            logits = self.logits_fn(x, t_norm)[:, lo:hi][where]  # (N, V)
        else:
            hidden = (self.hidden_fn or self.model.hidden_states)(x, t_norm, self.attn)
            logits = self.model.head(hidden[:, lo:hi][where])  # (N, V)
        return draw_tokens(logits, self.temperature, self.mask_id, self.generator)

    def time(self, t: float) -> torch.Tensor:
        return torch.full((self.B,), t, device=self.device)


def _check(
    prompt_ids, gen_length, remasking, temperature, seed, generator, block_length, threshold,
    config,
) -> int:
    """Validate :func:`sample`'s arguments; returns the block length."""
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
    if threshold is not None:
        if not 0.0 < threshold <= 1.0:
            raise UsageError(f"threshold must lie in (0, 1], got {threshold}")
        if config.transition == "uniform":
            raise UsageError("threshold sampling needs the absorbing transition")
    block_length = block_length or gen_length
    if block_length < 1 or gen_length % block_length:
        raise UsageError(
            f"gen_length {gen_length} is not a multiple of block_length {block_length}"
        )
    return block_length


def _initial_response(run: _Run, gen_length: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, G): all [MASK] (absorbing) or uniform noise (uniform transition)."""
    if run.config.transition == "uniform":
        start = uniform_noise(
            (run.B, gen_length), run.model.vocab_size, run.mask_id, run.generator
        ).to(run.device)
    else:
        start = torch.full((run.B, gen_length), run.mask_id, device=run.device)
    return start.to(dtype)


def _uniform_step(run: _Run, x: torch.Tensor, lo: int, hi: int, k: int, t: float, s: float):
    """Predict x0 on the whole block, then re-noise it to the marginal at ``s`` (unless last)."""
    W = hi - lo
    every = torch.ones((run.B, W), dtype=torch.bool, device=run.device)
    tokens, _ = run.predict(x, run.time(t), lo, hi, every)
    pred = tokens.view(run.B, W).to(x.dtype)
    if k > 1:
        beta_s = float(corruption_prob(s, 1, run.config.schedule))
        noise = uniform_noise((run.B, W), run.model.vocab_size, run.mask_id, run.generator)
        pred = torch.where(run.rand((run.B, W)) < beta_s, noise.to(run.device, x.dtype), pred)
    x[:, lo:hi] = pred


def _absorbing_step(
    run: _Run, x: torch.Tensor, lo: int, hi: int, k: int, t: float, s: float, remasking: str
) -> bool:
    """One step on the block's masked positions; False when nothing was left to reveal."""
    window = x[:, lo:hi]  # (B, W), a view
    masked = window == run.mask_id  # (B, W)
    if not masked.any():
        return False
    tokens, conf = run.predict(x, run.time(t), lo, hi, masked)  # (N,), (N,)
    if k == 1:
        reveal = masked
    elif remasking == "random":
        reveal = _reveal_random(masked, t, s, run.config.schedule, run.rand)
    else:
        reveal = reveal_low_confidence(masked, conf, s, run.config.schedule)
    _commit(x, lo, hi, masked, reveal, tokens)
    return True


def _threshold_step(run: _Run, x: torch.Tensor, lo: int, hi: int, threshold: float) -> bool:
    """One confidence-threshold step; the time is each row's masked fraction of the block."""
    window = x[:, lo:hi]
    masked = window == run.mask_id
    if not masked.any():
        return False
    t_norm = masked.sum(dim=1).float() / (hi - lo)  # (B,)
    tokens, conf = run.predict(x, t_norm, lo, hi, masked)
    _commit(x, lo, hi, masked, reveal_above_threshold(masked, conf, threshold), tokens)
    return True


def _commit(x, lo, hi, masked, reveal, tokens) -> None:
    """Write the revealed predictions into the window ``x[:, lo:hi]``."""
    window = x[:, lo:hi]
    proposal = window.masked_scatter(masked, tokens.to(x.dtype))  # (B, W)
    x[:, lo:hi] = torch.where(reveal, proposal, window)


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
    threshold: float | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    logits_fn: LogitsFn | None = None,
    hidden_fn: HiddenFn | None = None,
    attention_mask: torch.Tensor | None = None,
    on_step: StepFn | None = None,
) -> torch.Tensor:
    """Generate ``gen_length`` tokens after each prompt: (B, Lp) long -> (B, Lp + gen_length).

    ``steps``: sampling steps in all (default T), split evenly over the blocks (the remainder is
    dropped); ignored with ``threshold``. ``seed`` (default 0) or ``generator`` fixes the
    randomness. The model is called as ``logits_fn(x, t_norm)`` if given, else ``model.head`` on
    ``hidden_fn(x, t_norm, attention_mask)`` (default ``model.hidden_states``) at the predicted
    positions only. ``attention_mask``: (B, Lp) for the prompt (generated positions are
    attended) or (B, Lp + gen_length); None attends everywhere.
    """
    block_length = _check(
        prompt_ids, gen_length, remasking, temperature, seed, generator, block_length,
        threshold, config,
    )
    n_blocks = gen_length // block_length
    steps = steps or config.num_steps
    if threshold is None and steps < n_blocks:
        raise UsageError(f"steps ({steps}) must be at least the number of blocks ({n_blocks})")
    steps_per_block = steps // n_blocks
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else seed)

    B, Lp = prompt_ids.shape
    device = prompt_ids.device
    run = _Run(
        model=model, config=config, B=B, device=device, mask_id=model.mask_token_id,
        attn=_full_attention_mask(attention_mask, B, Lp, gen_length, device),
        temperature=temperature, generator=generator, logits_fn=logits_fn, hidden_fn=hidden_fn,
    )
    x = torch.cat([prompt_ids, _initial_response(run, gen_length, prompt_ids.dtype)], dim=1)
    done = 0
    for b in range(n_blocks):
        lo, hi = Lp + b * block_length, Lp + (b + 1) * block_length
        if threshold is not None:
            while _threshold_step(run, x, lo, hi, threshold):
                done += 1
                if on_step is not None:
                    on_step(done, x)
            continue
        for k in range(steps_per_block, 0, -1):
            t, s = k / steps_per_block, (k - 1) / steps_per_block
            if config.transition == "uniform":
                _uniform_step(run, x, lo, hi, k, t, s)
            elif not _absorbing_step(run, x, lo, hi, k, t, s, remasking):
                break  # block finished early
            done += 1
            if on_step is not None:
                on_step(done, x)
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
