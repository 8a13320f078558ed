"""The one interface every base diffusion LM implements.

A base denoiser ``f(x_t, t, c) -> H`` returns final hidden states ``H`` (B, L, d) and
a frozen output head maps ``H`` to logits. Adaptation methods (``ldp.methods``) perturb ``H`` or
the modules inside the backbone; the diffusion process (``ldp.diffusion``) only ever calls
``forward`` (or ``hidden_states`` + ``head``).

Conventions shared by every implementation:

- ``input_ids``: LongTensor (B, L); masked positions hold ``mask_token_id``.
- ``t``: FloatTensor (B,) with the normalised diffusion time ``t / T`` in [0, 1], or None. Models
  without time conditioning ignore it (as LLaDA does); adaLN models embed it.
- ``attention_mask``: (B, L) with 1 for positions to attend to, or None (attend everywhere).
  Diffusion SFT pads with EOS and attends to the padding (LLaDA), so None is the common case.
- Positions count attended tokens only (:func:`position_ids`): a row's output does not depend on
  how much unattended padding sits before it, so left-padded evaluation batches and right-padded
  training batches see the same positions, and a row never depends on its batch mates.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["Denoiser", "DenoiserAttributes", "BlockParts", "parameter_count", "position_ids"]


def position_ids(attention_mask: torch.Tensor | None, batch: int, length: int,
                 device: torch.device) -> torch.Tensor:
    """(B, L) long positions: ``0..L-1`` without a mask, else the running count of attended
    tokens minus one (unattended padding repeats its neighbour's position; it is never attended
    to, so its value does not matter)."""
    if attention_mask is None:
        return torch.arange(length, device=device).expand(batch, length)
    return (attention_mask.long().cumsum(dim=1) - 1).clamp_min(0)


class BlockParts(Protocol):
    """Where adaptation methods attach inside one transformer block (names relative to the block).

    ``q``, ``k``, ``v``, ``o``: the attention projections (``nn.Linear``); ``up``, ``down``: the
    feed-forward sub-layer's input and output projections (``nn.Linear``; a gated FFN's gate is
    not named); ``attention``: the module whose output is the attention sub-layer's output before
    the residual add; ``ffn``: the module whose output is the feed-forward sub-layer's output
    before the residual add.
    """

    q: str
    k: str
    v: str
    o: str
    up: str
    down: str
    attention: str
    ffn: str



class DenoiserAttributes:
    """The five attributes of :class:`Denoiser`, read off one object: a backbone reads them
    from its config, a wrapper (an adapted model, a composition) from the base it wraps."""

    def _attribute_source(self) -> Any:
        raise NotImplementedError

    @property
    def mask_token_id(self) -> int:
        return self._attribute_source().mask_token_id

    @property
    def pad_token_id(self) -> int:
        return self._attribute_source().pad_token_id

    @property
    def eos_token_id(self) -> int:
        return self._attribute_source().eos_token_id

    @property
    def vocab_size(self) -> int:
        return self._attribute_source().vocab_size

    @property
    def hidden_size(self) -> int:
        return self._attribute_source().hidden_size


@runtime_checkable
class Denoiser(Protocol):
    """A masked-diffusion LM backbone (native transformer or a warm-started HF encoder)."""

    mask_token_id: int
    pad_token_id: int
    eos_token_id: int
    vocab_size: int
    hidden_size: int

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        t: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states H: (B, L) ids -> (B, L, d)."""
        ...

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Frozen output head: (..., d) -> (..., V) logits."""
        ...

    def forward(
        self,
        input_ids: torch.Tensor,
        t: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, L, V) = head(hidden_states(...))."""
        ...

    def blocks(self) -> nn.ModuleList:
        """The transformer blocks in order; each maps the residual stream (B, L, d) to itself.

        A forward hook on block ``i`` sees (and may replace) the residual stream after block ``i``;
        the block may return a tensor or a tuple whose first element is the hidden states.
        """
        ...

    def block_parts(self) -> BlockParts:
        """Names of the attachable modules inside each block (see :class:`BlockParts`)."""
        ...


def parameter_count(params) -> int:
    """Number of elements of distinct parameters (tied ones counted once); works on meta."""
    seen: set[int] = set()
    total = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total
