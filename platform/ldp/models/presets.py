"""The size presets of the native backbone, as plain data.

Apart from :mod:`ldp.models.sizes` (which builds configs and counts parameters, and so imports
torch and transformers), so that a command can check ``--size`` in milliseconds before it does
anything expensive.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SIZES", "size_names"]

_SHARED: dict[str, Any] = {
    "vocab_size": 30522,
    "mask_token_id": 103,  # [MASK]
    "pad_token_id": 0,  # [PAD]
    "eos_token_id": 102,  # [SEP]
    "tokenizer": "sentence-transformers/all-MiniLM-L6-v2",
    "tie_word_embeddings": True,
}

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        **_SHARED,
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
        "max_position_embeddings": 512,
    },
    "350m": {
        **_SHARED,
        "num_hidden_layers": 24,
        "hidden_size": 1024,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "max_position_embeddings": 1024,
    },
    "1.3b": {
        **_SHARED,
        "num_hidden_layers": 24,
        "hidden_size": 2048,
        "num_attention_heads": 16,
        "intermediate_size": 8192,
        "max_position_embeddings": 2048,
    },
    "7b": {
        **_SHARED,
        "num_hidden_layers": 32,
        "hidden_size": 4096,
        "num_attention_heads": 32,
        "intermediate_size": 16384,
        "max_position_embeddings": 4096,
    },
}
"""Preset name -> ``DiffusionTransformerConfig`` keyword arguments (:mod:`ldp.models.native`)."""


def size_names() -> list[str]:
    """The preset names, smallest first."""
    return list(SIZES)
