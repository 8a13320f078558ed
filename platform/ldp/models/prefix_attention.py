"""Attention with a learned key/value prefix, the one computation both backbones' prefix hooks use.

Two forms (``k_prefix``/``v_prefix``: (B, heads, P, head_dim)):

- joint (``gate`` None; Li & Liang's prefix tuning): the P prefix keys join the sequence's keys in
  one softmax, and every query may attend to them. A fresh prefix is not the identity: its keys
  take part in every softmax and draw attention away from the sequence;
- gated (``gate`` (heads,); LLaMA-Adapter's zero-initialised attention): the prefix gets a softmax
  of its own, and its output is added to the sequence's attention through a per-head gate. With
  the gate at zero the attention is exactly the base's.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["attend_with_prefix", "extend_attention_mask"]


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


def attend_with_prefix(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_prefix: torch.Tensor,
    v_prefix: torch.Tensor,
    gate: torch.Tensor | None = None,
    attn_mask: torch.Tensor | None = None,
    *,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention of q, k, v (B, heads, L, head_dim) with the prefix, in the
    joint form (``gate`` None) or the gated one (``gate`` (heads,)) -> (B, heads, L, head_dim).
    ``attn_mask`` masks the sequence's keys (bool, True = attend, or additive float)."""
    k_prefix, v_prefix = k_prefix.to(k.dtype), v_prefix.to(v.dtype)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask.to(q.dtype)
    if gate is None:
        return F.scaled_dot_product_attention(
            q, torch.cat([k_prefix, k], dim=2), torch.cat([v_prefix, v], dim=2),
            attn_mask=extend_attention_mask(attn_mask, k_prefix.shape[2]),
            dropout_p=dropout_p, scale=scale,
        )
    own = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
    prefix = F.scaled_dot_product_attention(q, k_prefix, v_prefix, dropout_p=dropout_p, scale=scale)
    return own + gate.to(own.dtype).view(1, -1, 1, 1) * prefix
