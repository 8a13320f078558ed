"""A tiny real native denoiser and an oracle that knows the clean sequence."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ldp.models.native import DiffusionTransformer, build_config

VOCAB, MASK = 40, 3


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    cfg = build_config(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, mask_token_id=MASK, pad_token_id=0,
        eos_token_id=2, tokenizer=None,
    )
    return DiffusionTransformer(cfg)


class Oracle(nn.Module):
    """Predicts ``target`` at every position with probability ``confidence`` (the rest uniform)."""

    mask_token_id, pad_token_id, eos_token_id, vocab_size = MASK, 0, 2, VOCAB

    def __init__(self, target: torch.Tensor, confidence: float = 1.0):
        super().__init__()
        self.target, self.confidence = target, confidence
        self.hidden_size = VOCAB

    def hidden_states(self, input_ids, t=None, attention_mask=None):
        probs = torch.full((*input_ids.shape, VOCAB), (1 - self.confidence) / (VOCAB - 1))
        probs.scatter_(-1, self.target[: input_ids.shape[0]].unsqueeze(-1), self.confidence)
        return probs.clamp_min(1e-12).log()

    def head(self, hidden):
        return hidden

    def forward(self, input_ids, t=None, attention_mask=None):
        return self.head(self.hidden_states(input_ids, t, attention_mask))
