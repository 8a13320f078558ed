"""Fixtures for the method tests: a test-local tiny Denoiser (hidden 32, 2 blocks).

It implements the ``ldp.models.Denoiser`` protocol the way the native backbone does (pre-norm
blocks, q/k/v/o ``nn.Linear`` with biases, a time embedding), so method tests do not depend on the
real backbones; ``test_backbones.py`` repeats the key checks on ``ldp.models``' real ones.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.nn import functional as F


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.num_heads, self.head_dim = heads, d // heads
        self.prefix_kv = None  # the native backbone's hook contract: fn(x) -> (k, v) (B, h, P, hs)

    def set_prefix_kv(self, fn) -> None:
        object.__setattr__(self, "prefix_kv", fn)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, l, d = x.shape
        h = self.heads

        def split(y):
            return y.view(b, l, h, d // h).transpose(1, 2)  # (B, h, L, hs)

        attn_mask = None if mask is None else mask.bool()[:, None, None, :]
        k, v = split(self.k(x)), split(self.v(x))
        if self.prefix_kv is not None:
            pk, pv = self.prefix_kv(x)
            k, v = torch.cat([pk, k], 2), torch.cat([pv, v], 2)
            if attn_mask is not None:
                attn_mask = torch.cat([attn_mask.new_ones(b, 1, 1, pk.shape[2]), attn_mask], -1)
        y = F.scaled_dot_product_attention(split(self.q(x)), k, v, attn_mask=attn_mask)
        return self.o(y.transpose(1, 2).reshape(b, l, d))


class _FFN(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = _Attention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.ffn = _FFN(d)

    def forward(self, x, mask=None):
        x = x + self.attn(self.ln1(x), mask)
        return x + self.ffn(self.ln2(x))


class TinyDenoiser(nn.Module):
    """A 2-block bidirectional transformer denoiser (vocab 40, hidden 32, time-conditioned)."""

    mask_token_id = 3
    pad_token_id = 0
    eos_token_id = 2

    def __init__(
        self,
        vocab_size: int = 40,
        hidden_size: int = 32,
        layers: int = 2,
        heads: int = 4,
        max_len: int = 32,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.embed = nn.Embedding(vocab_size, hidden_size)
        self.pos = nn.Parameter(torch.randn(max_len, hidden_size) * 0.02)
        self.time = nn.Linear(1, hidden_size)
        self.layers = nn.ModuleList(_Block(hidden_size, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden_size)
        self.lm_head = nn.Linear(hidden_size, vocab_size, bias=False)

    def hidden_states(self, input_ids, t=None, attention_mask=None):
        x = self.embed(input_ids) + self.pos[: input_ids.shape[1]]
        if t is not None:
            x = x + self.time(torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1, 1))
        for block in self.layers:
            x = block(x, attention_mask)
        return self.norm(x)

    def head(self, hidden):
        return self.lm_head(hidden)

    def forward(self, input_ids, t=None, attention_mask=None):
        return self.head(self.hidden_states(input_ids, t, attention_mask))

    def blocks(self):
        return self.layers

    def block_parts(self):
        return SimpleNamespace(
            q="attn.q", k="attn.k", v="attn.v", o="attn.o", attention="attn", ffn="ffn"
        )


def make_tiny(seed: int = 0, **kw) -> TinyDenoiser:
    torch.manual_seed(seed)
    model = TinyDenoiser(**kw)
    with torch.no_grad():  # non-trivial biases everywhere, so BitFit/LoRA start from a real model
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture
def tiny() -> TinyDenoiser:
    return make_tiny()


@pytest.fixture
def batch():
    """(input_ids (2, 12), t (2,), instruction_mask (2, 12)); some positions masked."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 40, (2, 12), generator=g)
    ids[:, 8:] = TinyDenoiser.mask_token_id
    inst = torch.zeros(2, 12, dtype=torch.bool)
    inst[:, :5] = True
    t = torch.tensor([0.9, 0.2])
    return ids, t, inst


# --------------------------------------------------------------------------- real backbones

VOCAB = 64


def make_native(seed: int = 0):
    """``ldp.models.native`` at hidden 32, 2 layers, adaLN time conditioning, random biases."""
    from ldp.models.native import DiffusionTransformer, build_config

    torch.manual_seed(seed)
    config = build_config(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        mask_token_id=3,
        pad_token_id=0,
        eos_token_id=2,
        time_conditioning=True,
        time_embedding_dim=16,
        time_cond_dim=16,
    )
    model = DiffusionTransformer(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


def make_bert(seed: int = 0):
    """``ldp.models.warmstart`` around a random 2-layer BERT (hidden 32) with a new tied head."""
    from ldp.models.warmstart import WarmStartConfig, WarmStartDenoiser
    from transformers import BertConfig

    torch.manual_seed(seed)
    inner = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    config = WarmStartConfig(
        inner_config=inner.to_dict(),
        inner_head="new",
        vocab_size=VOCAB,
        hidden_size=32,
        mask_token_id=3,
        pad_token_id=0,
        eos_token_id=2,
        step_embedding_dim=16,
    )
    return WarmStartDenoiser(config).eval()


BACKBONES = {"tiny": make_tiny, "native": make_native, "bert": make_bert}
