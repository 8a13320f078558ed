"""The masked-diffusion process (docs/METHOD.md): small named functions with shapes in their docstrings.

- :mod:`~ldp.diffusion.config`: :class:`DiffusionConfig` (T, transition, schedule, loss weighting
  and normalisation)
- :mod:`~ldp.diffusion.schedule`: beta_t (linear, cosine), the discrete ELBO weight
- :mod:`~ldp.diffusion.corruption`: t sampling (antithetic option), q(x_t | x0) on response
  positions only
- :mod:`~ldp.diffusion.loss`: paper Eq. 8 with the LLaDA/dllm SFT conventions, the head run at
  scored positions only
- :mod:`~ldp.diffusion.sampler`: the reverse process (posterior reveal, low-confidence remasking,
  confidence-threshold parallel decoding, semi-autoregressive blocks, a per-step callback)
- :mod:`~ldp.diffusion.rows`: the same steps for a batch of independent rows (own lengths, steps,
  seeds), one model call per step for all of them (serving)
- :mod:`~ldp.diffusion.elbo`: Monte-Carlo ELBO NLL bound (antithetic t) and perplexity

Everything calls the model through the ``Denoiser`` interface only (``hidden_states``, ``head``,
``mask_token_id``, ``vocab_size``), or through the caller's ``hidden_fn`` / ``logits_fn``.
"""

from ldp.diffusion.config import DiffusionConfig
from ldp.diffusion.corruption import corrupt, sample_t, uniform_noise
from ldp.diffusion.elbo import elbo_nll, elbo_perplexity, elbo_steps, perplexity
from ldp.diffusion.loss import (
    HiddenFn,
    diffusion_loss,
    masked_positions_nll,
    reduce_loss,
    token_nll,
    training_loss,
)
from ldp.diffusion.rows import RowResult, RowSpec, sample_rows
from ldp.diffusion.sampler import (
    LogitsFn,
    StepFn,
    draw_tokens,
    reveal_above_threshold,
    reveal_count,
    sample,
)
from ldp.diffusion.schedule import corruption_prob, elbo_weight, loss_weight

__all__ = [
    "DiffusionConfig",
    "HiddenFn",
    "LogitsFn",
    "RowResult",
    "RowSpec",
    "StepFn",
    "corrupt",
    "corruption_prob",
    "diffusion_loss",
    "draw_tokens",
    "elbo_nll",
    "elbo_perplexity",
    "elbo_steps",
    "elbo_weight",
    "loss_weight",
    "masked_positions_nll",
    "perplexity",
    "reduce_loss",
    "reveal_above_threshold",
    "reveal_count",
    "sample",
    "sample_rows",
    "sample_t",
    "token_nll",
    "training_loss",
    "uniform_noise",
]
