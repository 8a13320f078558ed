"""Self-attention with learned key/value prefixes, for Hugging Face BERT-style encoders.

``peft``'s prefix tuning feeds ``past_key_values``, which bidirectional encoders ignore,
so the warm-started backbone gets each ``BertSelfAttention`` (transformers 5.x: ``query``,
``key``, ``value`` Linear layers, ``forward(hidden_states, attention_mask=None, cache=None,
**kwargs) -> (attn_output, attn_weights)``) replaced by :class:`PrefixSelfAttention`, which reuses
the original Linear modules under the same names (so the base's ``state_dict`` keys do not change)
and attends to the prefix keys/values with :func:`ldp.models.prefix_attention.attend_with_prefix`
(joint or gated, as the native backbone does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ldp.models.prefix_attention import attend_with_prefix, extend_attention_mask

__all__ = ["PrefixSelfAttention", "extend_attention_mask", "is_hf_self_attention"]


def is_hf_self_attention(module: nn.Module) -> bool:
    """True for BERT-family self-attention modules this replacement understands."""
    return all(
        isinstance(getattr(module, n, None), nn.Linear) for n in ("query", "key", "value")
    ) and all(hasattr(module, n) for n in ("num_attention_heads", "attention_head_size"))


class PrefixSelfAttention(nn.Module):
    """Drop-in for a BERT self-attention module with P learned key/value prefixes."""

    def __init__(
        self, original: nn.Module, prefix: Callable[[], tuple[torch.Tensor, ...]]
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
        pk, pv, *gate = self._prefix()  # (P, h * hs) each [, (h,)]
        p = pk.shape[0]
        pk = pk.view(1, p, h, hs).transpose(1, 2).expand(b, -1, -1, -1)  # (B, h, P, hs)
        pv = pv.view(1, p, h, hs).transpose(1, 2).expand(b, -1, -1, -1)
        out = attend_with_prefix(
            q, k, v, pk, pv, gate[0] if gate else None, attention_mask,
            dropout_p=self.dropout.p if self.training else 0.0, scale=self.scaling,
        )  # (B, h, L, hs)
        return out.transpose(1, 2).reshape(b, l, h * hs), None
