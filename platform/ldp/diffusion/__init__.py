"""The masked-diffusion process (DESIGN §2): small named functions with shapes in their docstrings.

- :mod:`config`: :class:`DiffusionConfig` (T, transition, schedule, loss weighting/normalisation)
- :mod:`schedule`: beta_t (linear, cosine), ELBO weights
- :mod:`corruption`: t sampling (antithetic option), q(x_t | x0) on response positions only
- :mod:`loss`: Eq. 8 with the LLaDA/dllm SFT conventions, logits at scored positions only
- :mod:`sampler`: the reverse process (posterior reveal, low-confidence remasking, blocks)
- :mod:`elbo`: Monte-Carlo ELBO NLL bound and perplexity

Everything calls the model through the ``Denoiser`` interface only.
"""

from ldp.diffusion.config import DiffusionConfig
from ldp.diffusion.corruption import corrupt, sample_t
from ldp.diffusion.elbo import elbo_nll, elbo_perplexity
from ldp.diffusion.loss import HiddenFn, reduce_loss, token_nll, training_loss
from ldp.diffusion.sampler import LogitsFn, sample
from ldp.diffusion.schedule import corruption_prob, elbo_weight, loss_weight

__all__ = [
    "DiffusionConfig",
    "HiddenFn",
    "LogitsFn",
    "corrupt",
    "corruption_prob",
    "elbo_nll",
    "elbo_perplexity",
    "elbo_weight",
    "loss_weight",
    "reduce_loss",
    "sample",
    "sample_t",
    "token_nll",
    "training_loss",
]
