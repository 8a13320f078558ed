"""Self-attention with learned key/value prefixes, for Hugging Face BERT-style encoders.

``peft``'s prefix tuning feeds ``past_key_values``, which bidirectional encoders ignore,
so the warm-started backbone gets each ``BertSelfAttention`` (transformers 5.x: ``query``,
``key``, ``value`` Linear layers, ``forward(hidden_states, attention_mask=None, cache=None,
**kwargs) -> (attn_output, attn_weights)``) replaced by :class:`PrefixSelfAttention`, which reuses
the original Linear modules under the same names (so the base's ``state_dict`` keys do not change)
and prepends the prefix keys/values before ``scaled_dot_product_attention``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["PrefixSelfAttention", "extend_attention_mask", "is_hf_self_attention"]


def is_hf_self_attention(module: nn.Module) -> bool:
    """True for BERT-family self-attention modules this replacement understands."""
    return all(
        isinstance(getattr(module, n, None), nn.Linear) for n in ("query", "key", "value")
    ) and all(hasattr(module, n) for n in ("num_attention_heads", "attention_head_size"))


def extend_attention_mask(mask: torch.Tensor | None, prefix_len: int) -> torch.Tensor | None:
    """Prepend ``prefix_len`` always-visible key columns to a bool (True = attend) or additive
    float attention mask of shape (..., Lk); None stays None."""
    if mask is None:
        return None
    shape = (*mask.shape[:-1], prefix_len)
    if mask.dtype == torch.bool:
        pad = torch.ones(shape, dtype=torch.bool, device=mask.device)
    else:
        pad = torch.zeros(shape, dtype=mask.dtype, device=mask.device)
    return torch.cat([pad, mask], dim=-1)


class PrefixSelfAttention(nn.Module):
    """Drop-in for a BERT self-attention module with P learned key/value prefixes."""

    def __init__(
        self, original: nn.Module, prefix: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    ) -> None:
        super().__init__()
        self.query = original.query
        self.key = original.key
        self.value = original.value
        self.dropout = getattr(original, "dropout", nn.Dropout(0.0))
        self.num_attention_heads = original.num_attention_heads
        self.attention_head_size = original.attention_head_size
        self.scaling = getattr(original, "scaling", self.attention_head_size**-0.5)
        self.config = getattr(original, "config", None)
        self.layer_idx = getattr(original, "layer_idx", None)
        self.is_decoder = getattr(original, "is_decoder", False)
        self.is_causal = getattr(original, "is_causal", False)
        self._prefix = prefix  # a plain callable: the prefix weights belong to the adapter
        self._original = [original]  # kept (unregistered) so the replacement can be undone
        self.train(original.training)  # a fresh module would default to training mode

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cache=None,
        **kwargs,
    ) -> tuple[torch.Tensor, None]:
        b, l, _ = hidden_states.shape
        h, hs = self.num_attention_heads, self.attention_head_size

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, h, hs).transpose(1, 2)  # (B, h, L, hs)

        q = heads(self.query(hidden_states))
        k = heads(self.key(hidden_states))
        v = heads(self.value(hidden_states))
        pk, pv = self._prefix()  # (P, h * hs) each
        p = pk.shape[0]
        pk = pk.to(k.dtype).view(1, p, h, hs).transpose(1, 2).expand(b, -1, -1, -1)  # (B, h, P, hs)
        pv = pv.to(v.dtype).view(1, p, h, hs).transpose(1, 2).expand(b, -1, -1, -1)
        k = torch.cat([pk, k], dim=2)  # (B, h, P + L, hs)
        v = torch.cat([pv, v], dim=2)
        mask = extend_attention_mask(attention_mask, p)
        if mask is not None and mask.dtype != torch.bool:
            mask = mask.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout.p if self.training else 0.0,
            scale=self.scaling,
        )  # (B, h, L, hs)
        return out.transpose(1, 2).reshape(b, l, h * hs), None
