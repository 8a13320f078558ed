"""The native bidirectional denoiser: shapes, bidirectionality, time conditioning, I/O, bf16,
gradient checkpointing, the prefix hook, and the Denoiser interface."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModel

from ldp.errors import UsageError
from ldp.models.denoiser import Denoiser
from ldp.models.loading import register_auto_classes
from ldp.models.native import DiffusionTransformer


@torch.no_grad()
def test_forward_shapes_and_protocol(make_tiny, ids):
    model = make_tiny()
    hidden = model.hidden_states(ids)
    logits = model(ids)
    assert hidden.shape == (2, 10, 32)
    assert logits.shape == (2, 10, 64)
    torch.testing.assert_close(model.head(hidden), logits)
    assert isinstance(model, Denoiser)
    assert (model.mask_token_id, model.pad_token_id, model.eos_token_id) == (3, 0, 2)
    assert (model.vocab_size, model.hidden_size) == (64, 32)
    assert len(model.blocks()) == 2


@torch.no_grad()
def test_attention_is_bidirectional(make_tiny, ids):
    model = make_tiny()
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 1) % 64  # change only the last token
    a, b = model.hidden_states(ids), model.hidden_states(changed)
    # position 0 sees the last token (a causal model would leave it untouched)
    assert not torch.allclose(a[:, 0], b[:, 0])


@torch.no_grad()
def test_attention_mask_hides_positions(make_tiny, ids):
    model = make_tiny()
    mask = torch.ones_like(ids)
    mask[:, 7:] = 0
    changed = ids.clone()
    changed[:, 8] = (ids[:, 8] + 5) % 64
    a = model.hidden_states(ids, attention_mask=mask)
    b = model.hidden_states(changed, attention_mask=mask)
    torch.testing.assert_close(a[:, :7], b[:, :7])  # masked-out keys are invisible
    assert not torch.allclose(model.hidden_states(ids)[:, :7], model.hidden_states(changed)[:, :7])


@torch.no_grad()
def test_rope_makes_order_matter(make_tiny):
    model = make_tiny()
    x = torch.tensor([[5, 6, 7, 8]])
    swapped = torch.tensor([[6, 5, 7, 8]])
    # same multiset of tokens: without positions, position 3 would see identical context
    assert not torch.allclose(model.hidden_states(x)[0, 3], model.hidden_states(swapped)[0, 3])


@torch.no_grad()
def test_time_conditioning_off_ignores_t(make_tiny, ids):
    model = make_tiny(time_conditioning=False)
    a = model(ids, torch.tensor([0.05, 0.1]))
    b = model(ids, torch.tensor([0.9, 1.0]))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@torch.no_grad()
def test_time_conditioning_zero_init_is_identity_then_learns(make_tiny, ids):
    cond = make_tiny(seed=3, time_conditioning=True)
    plain_config = type(cond.config)(**{**cond.config.to_dict(), "time_conditioning": False})
    plain = DiffusionTransformer(plain_config).eval()
    missing, unexpected = plain.load_state_dict(cond.state_dict(), strict=False)
    assert not missing and all("modulation" in k or "time_embed" in k for k in unexpected)
    early, late = torch.tensor([0.01, 0.02]), torch.tensor([0.98, 0.99])
    # at init: exactly the unconditioned model, whatever t is
    torch.testing.assert_close(cond(ids, early), plain(ids), rtol=0, atol=0)
    torch.testing.assert_close(cond(ids, late), plain(ids), rtol=0, atol=0)
    # after its (zero-initialised) modulation layers move, t changes the output
    for block in cond.blocks():
        nn.init.normal_(block.modulation.weight, std=0.1)
    assert not torch.allclose(cond(ids, early), cond(ids, late), atol=1e-4)


def test_save_load_round_trip_is_exact(make_tiny, tmp_path, ids):
    for i, overrides in enumerate([{}, {"time_conditioning": True, "tie_word_embeddings": False}]):
        model = make_tiny(seed=i, **overrides)
        if overrides:
            nn.init.normal_(model.blocks()[0].modulation.weight, std=0.1)  # make t matter
        folder = tmp_path / f"m{i}"
        model.save_pretrained(folder)
        assert (folder / "model.safetensors").is_file()
        register_auto_classes()
        loaded = AutoModel.from_pretrained(folder).eval()
        assert type(loaded) is DiffusionTransformer
        for key in ("hidden_size", "time_conditioning", "tie_word_embeddings", "mask_token_id"):
            assert getattr(loaded.config, key) == getattr(model.config, key)
        t = torch.tensor([0.3, 0.8])
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids, t), model(ids, t), rtol=0, atol=0)
        tied = loaded.lm_head.weight is loaded.embed_tokens.weight
        assert tied == model.config.tie_word_embeddings


@torch.no_grad()
def test_bf16_forward(make_tiny, ids):
    model = make_tiny(time_conditioning=True)
    ref = model(ids, torch.tensor([0.2, 0.7]))
    model = model.to(torch.bfloat16)
    out = model(ids, torch.tensor([0.2, 0.7]))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 10, 64)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.05)


def test_gradient_checkpointing_same_gradients(make_tiny, ids):
    def grads(model):
        model.zero_grad()
        loss = model(ids, torch.tensor([0.4, 0.6])).logsumexp(-1).mean()
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model = make_tiny(time_conditioning=True).train()
    nn.init.normal_(model.blocks()[1].modulation.weight, std=0.1)
    reference = grads(model)

    calls = []
    for block in model.blocks():
        block.attn.register_forward_hook(lambda *a: calls.append(1))
    model.activation_checkpointing_enable()
    checkpointed = grads(model)
    assert len(calls) == 2 * len(model.blocks())  # attention ran again in the backward pass
    assert reference.keys() == checkpointed.keys() and len(reference) > 10
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_prefix_kv_hook(make_tiny, ids):
    model = make_tiny()
    attn = model.blocks()[0].attn
    base = model(ids)
    P = 3
    k = torch.randn(1, 4, P, 8)
    v = torch.randn(1, 4, P, 8)
    seen = []

    def prefix(x):
        seen.append(tuple(x.shape))
        return k.expand(x.shape[0], -1, -1, -1), v.expand(x.shape[0], -1, -1, -1)

    model.set_prefix_kv(0, prefix)
    assert attn.prefix_kv is prefix and model.block_parts().self_attention == "attn"
    with_prefix = model(ids)
    assert seen == [(2, 4, 10, 8)]  # the queries (B, nh, L, hd)
    assert not torch.allclose(with_prefix, base)
    assert not any("prefix" in name for name in model.state_dict())
    # padding masks are extended to the prefix (same result as no mask) ...
    torch.testing.assert_close(model(ids, attention_mask=torch.ones_like(ids)), with_prefix)
    # ... on the left: padded keys stay hidden behind a prefix
    mask = torch.ones_like(ids)
    mask[:, 6:] = 0
    changed = ids.clone()
    changed[:, 8] = (ids[:, 8] + 7) % 64
    torch.testing.assert_close(model(ids, attention_mask=mask)[:, :6],
                               model(changed, attention_mask=mask)[:, :6])
    attn.set_prefix_kv(None)
    torch.testing.assert_close(model(ids), base, rtol=0, atol=0)
    attn.set_prefix_kv(lambda x: (torch.zeros(2, 4, P, 7), torch.zeros(2, 4, P, 7)))
    with pytest.raises(UsageError, match="prefix_kv returned"):
        model(ids)


def test_block_parts_name_linear_layers_peft_can_target(make_tiny):
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import LoraLayer

    model = make_tiny()
    parts = model.block_parts()
    names = []
    for i, block in enumerate(model.blocks()):
        for field in ("q", "k", "v", "o"):
            assert isinstance(block.get_submodule(getattr(parts, field)), nn.Linear)
            names.append(f"layers.{i}.{getattr(parts, field)}")
        assert block.get_submodule(parts.up) is block.mlp.up_proj
        assert block.get_submodule(parts.down) is block.mlp.down_proj
        assert block.get_submodule(parts.attention) is block.attn
        assert block.get_submodule(parts.ffn) is block.mlp
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=names))
    lora = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    assert len(lora) == 4 * 2
    assert peft_model.get_nb_trainable_parameters()[0] == 8 * 2 * (32 * 2)


def test_biases_everywhere_for_bitfit(make_tiny):
    model = make_tiny()
    block = model.blocks()[0]
    for module in (block.attn.q_proj, block.attn.o_proj, block.mlp.up_proj, block.mlp.down_proj,
                   block.attn_norm, block.ffn_norm, model.norm, model.lm_head):
        assert module.bias is not None


def test_bad_inputs_are_usage_errors(make_tiny, ids):
    model = make_tiny()
    with pytest.raises(UsageError, match="input_ids must be"):
        model(ids[0])
    with pytest.raises(UsageError, match="integer token ids"):
        model(ids.float())
    with pytest.raises(UsageError, match="one value per batch row"):
        model(ids, torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(UsageError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(UsageError, match="exceeds max_position_embeddings"):
        model(torch.zeros(1, 33, dtype=torch.long))


def test_bad_config_is_usage_error():
    from ldp.models.native import build_config

    with pytest.raises(UsageError, match="not a multiple"):
        build_config(hidden_size=30, num_attention_heads=4)
    with pytest.raises(UsageError, match="unknown model config key 'hiden_size'"):
        build_config(hiden_size=32)
    with pytest.raises(UsageError, match="must be int"):
        build_config(hidden_size="big")
    with pytest.raises(UsageError, match="outside the vocabulary"):
        build_config(vocab_size=10, mask_token_id=103)


def test_realign_parameters_copies_unaligned_views_and_keeps_ties(make_tiny):
    from ldp.models.native import realign_parameters

    model = make_tiny()
    weight = model.embed_tokens.weight
    buffer = torch.zeros(1 + weight.numel())
    buffer[1:] = weight.detach().reshape(-1)
    weight.data = buffer[1:].view_as(weight)  # 4 bytes past an aligned start, like an mmap view
    assert weight.data_ptr() % 64 != 0
    copied = realign_parameters(model)
    assert copied == 1
    assert model.embed_tokens.weight.data_ptr() % 64 == 0
    assert model.lm_head.weight is model.embed_tokens.weight
    expected = buffer[1:].view_as(weight)
    torch.testing.assert_close(model.embed_tokens.weight, expected, rtol=0, atol=0)
    assert realign_parameters(model) == 0
