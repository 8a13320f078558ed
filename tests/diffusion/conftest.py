"""Test-local denoisers implementing the ``Denoiser`` interface (no other project package).

- :class:`ToyDenoiser`: token + position embedding, a mean-pooled (bidirectional) context and a
  time input, a linear head. Tiny, trainable in a few dozen steps.
- :class:`Oracle`: knows the clean sequence; puts probability ``confidence`` on it (the rest
  uniform over the other tokens), so its NLL per token is known in closed form.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

VOCAB, MASK, PAD, EOS = 40, 3, 0, 2


class ToyDenoiser(nn.Module):
    mask_token_id, pad_token_id, eos_token_id, vocab_size = MASK, PAD, EOS, VOCAB

    def __init__(self, hidden_size: int = 32, max_len: int = 64):
        super().__init__()
        self.hidden_size = hidden_size
        self.embed = nn.Embedding(VOCAB, hidden_size)
        self.pos = nn.Embedding(max_len, hidden_size)
        self.time = nn.Linear(1, hidden_size)
        self.mix = nn.Linear(hidden_size, hidden_size)
        self.out = nn.Linear(hidden_size, VOCAB)
        self.head_calls: list[int] = []  # rows given to the head, per call

    def hidden_states(self, input_ids, t=None, attention_mask=None):  # (B, L) -> (B, L, d)
        B, L = input_ids.shape
        h = self.embed(input_ids) + self.pos(torch.arange(L))  # (B, L, d)
        ctx = self.mix(h.mean(dim=1, keepdim=True))  # (B, 1, d)
        if t is not None:
            ctx = ctx + self.time(t.float().view(B, 1, 1))
        return torch.tanh(h + ctx)

    def head(self, hidden):  # (..., d) -> (..., V)
        self.head_calls.append(hidden[..., 0].numel())
        return self.out(hidden)

    def forward(self, input_ids, t=None, attention_mask=None):
        return self.head(self.hidden_states(input_ids, t, attention_mask))


class Oracle(nn.Module):
    """log-probabilities as hidden states, identity head: p(target) = ``confidence``."""

    mask_token_id, pad_token_id, eos_token_id, vocab_size = MASK, PAD, EOS, VOCAB
    hidden_size = VOCAB

    def __init__(self, target: torch.Tensor, confidence: float = 1.0):
        super().__init__()
        self.target, self.confidence = target, confidence

    def hidden_states(self, input_ids, t=None, attention_mask=None):
        rest = (1.0 - self.confidence) / (VOCAB - 1)
        probs = torch.full((*input_ids.shape, VOCAB), rest)
        probs.scatter_(
            -1,
            self.target[: input_ids.shape[0], : input_ids.shape[1]].unsqueeze(-1),
            self.confidence,
        )
        return probs.clamp_min(1e-30).log()

    def head(self, hidden):
        return hidden

    def forward(self, input_ids, t=None, attention_mask=None):
        return self.head(self.hidden_states(input_ids, t, attention_mask))


def make_batch(B: int = 4, L: int = 12, prompt: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids (no special tokens) with the first ``prompt`` positions as the prompt."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (B, L), generator=g)
    response = torch.zeros(B, L, dtype=torch.bool)
    response[:, prompt:] = True
    return {"input_ids": ids, "response_mask": response}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def toy():
    torch.manual_seed(0)
    return ToyDenoiser()
