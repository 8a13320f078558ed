"""Activation memory of one training micro-batch per GPU, estimated from the model's shape.

Two regimes, because the adaptation method decides whether autograd runs through the base:

- **No gradient through the base** (``lora-diffusion`` injecting at the final hidden state only):
  the base forward runs without autograd, so only one block's working set is alive at a time
  (its input and output, Q/K/V, the FFN's intermediate), plus the final hidden states the adapter
  reads, the adapter's own small activations, and the output head at the scored positions.
- **Gradient through the base** (every other method, or ``lora-diffusion`` with
  ``inject_layers``): autograd keeps each block's activations for the backward pass. Per block and
  token that is about ``34 * hidden`` bytes in 16-bit precision with a fused (flash / memory-
  efficient) attention kernel, the figure of Korthikanti et al., "Reducing Activation Recomputation
  in Large Transformer Models" (2022), without the ``5 * heads * seq`` term that only an unfused
  attention materialises.

The output head is counted at the scored (answer) positions only, as the loss computes it there:
logits and their gradient in fp32. Estimates, not measurements: the allocator's fragmentation and
temporary buffers come on top (the strategy chooser keeps a headroom for them).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ActivationShape", "activation_bytes"]


@dataclass(frozen=True)
class ActivationShape:
    """What the estimate needs to know about the model and the batch."""

    batch: int
    """Micro-batch per GPU."""
    seq_len: int
    """Prompt + answer tokens per row."""
    answer_len: int
    """Scored positions per row (the output head runs there only)."""
    hidden: int
    layers: int
    ffn: int
    vocab: int
    dtype_bytes: int = 2
    """Bytes per activation element (2 for bf16)."""


def activation_bytes(shape: ActivationShape, *, grad_through_base: bool, adapter_width: int = 0) -> int:
    """Estimated peak activation bytes per GPU for one micro-batch (see the module docstring).

    ``adapter_width``: the adapter's total bottleneck width at the final state (sum of ranks of the
    modules active at one step); its activations are kept for the backward pass."""
    s = shape
    tokens = s.batch * s.seq_len
    head = 2 * s.batch * s.answer_len * s.vocab * 4  # fp32 logits + their gradient
    final = tokens * s.hidden * s.dtype_bytes
    if grad_through_base:
        stored = s.layers * tokens * s.hidden * 34 * s.dtype_bytes // 2
        return int(stored + final + head)
    block = tokens * (4 * s.hidden + 2 * s.ffn) * s.dtype_bytes
    adapter = tokens * (2 * s.hidden + 2 * adapter_width) * 4
    return int(block + final + adapter + head)
