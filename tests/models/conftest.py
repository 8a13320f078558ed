"""Tiny model configs for the model tests (hidden 32, two blocks: each test runs in seconds)."""

from __future__ import annotations

import pytest
import torch

from ldp.models.native import DiffusionTransformer, build_config


def tiny_config(**overrides):
    kwargs = dict(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        mask_token_id=3,
        pad_token_id=0,
        eos_token_id=2,
        tokenizer=None,
    )
    kwargs.update(overrides)
    return build_config(**kwargs)


def tiny_model(seed: int = 0, **overrides) -> DiffusionTransformer:
    torch.manual_seed(seed)
    return DiffusionTransformer(tiny_config(**overrides)).eval()


@pytest.fixture
def make_tiny():
    """``make_tiny(seed=0, **config_overrides)`` -> a tiny DiffusionTransformer in eval mode."""
    return tiny_model


@pytest.fixture
def ids() -> torch.Tensor:
    return torch.randint(4, 64, (2, 10), generator=torch.Generator().manual_seed(1))
