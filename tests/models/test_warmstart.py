"""Warm start: a real pretrained encoder (the offline MiniLM) and a tiny random BERT masked LM
turned into denoisers."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModel, BertConfig, BertForMaskedLM

from ldp.errors import LdpError, UsageError
from ldp.models.denoiser import Denoiser
from ldp.models.loading import default_tokenizer, minilm_path, register_auto_classes
from ldp.models.warmstart import WarmStartDenoiser, warm_start


@pytest.fixture(scope="module")
def minilm():
    model, tokenizer = warm_start(minilm_path())
    return model, tokenizer


@pytest.fixture(scope="module")
def batch(minilm):
    _, tokenizer = minilm
    enc = tokenizer(["the cat sat on the [MASK] .", "diffusion models denoise text"],
                    padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


@pytest.fixture
def minilm_fresh():
    """A MiniLM denoiser a test may modify."""
    model, _ = warm_start(minilm_path())
    return model


@pytest.fixture(scope="module")
def tiny_mlm_folder(tmp_path_factory):
    """A random 2-layer BertForMaskedLM (hidden 32) saved with the MiniLM tokenizer."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, architectures=["BertForMaskedLM"],
    )
    folder = tmp_path_factory.mktemp("tiny_mlm")
    BertForMaskedLM(config).save_pretrained(folder)
    default_tokenizer().save_pretrained(folder)
    return folder


def test_minilm_warm_start_loads(minilm, batch):
    model, tokenizer = minilm
    ids, mask = batch
    assert isinstance(model, Denoiser) and not model.training
    assert model.config.inner_head == "new"  # BertModel checkpoint: a new tied head
    assert model.mask_token_id == tokenizer.convert_tokens_to_ids("[MASK]") == 103
    assert model.eos_token_id == tokenizer.sep_token_id  # BERT has no EOS: [SEP]
    assert model.pad_token_id == tokenizer.pad_token_id
    with torch.no_grad():
        logits = model(ids, torch.tensor([0.5, 0.5]), mask)
    assert logits.shape == (*ids.shape, 30522)
    assert model.lm_head.decoder.weight is model.get_input_embeddings().weight


@torch.no_grad()
def test_hidden_states_equal_the_pretrained_encoder_at_init(minilm, batch):
    model, _ = minilm
    ids, mask = batch
    raw = AutoModel.from_pretrained(minilm_path()).eval()
    expected = raw(input_ids=ids, attention_mask=mask).last_hidden_state
    # Compared where attended: padding positions repeat their neighbour's position id (the
    # positions count attended tokens only), and nothing ever reads their states.
    keep = mask.bool()
    for t in (torch.tensor([0.0, 0.0]), torch.tensor([0.3, 0.9]), None):
        got = model.hidden_states(ids, t, mask)
        torch.testing.assert_close(got[keep], expected[keep], rtol=0, atol=0)


@torch.no_grad()
def test_step_embedding_starts_at_zero_then_makes_t_matter(minilm_fresh, batch):
    model = minilm_fresh
    ids, mask = batch
    early, late = torch.tensor([0.05, 0.05]), torch.tensor([0.95, 0.95])
    torch.testing.assert_close(model(ids, early, mask), model(ids, late, mask), rtol=0, atol=0)
    nn.init.normal_(model.step_embed.fc2.weight, std=0.05)
    assert not torch.allclose(model(ids, early, mask), model(ids, late, mask), atol=1e-4)


def test_minilm_round_trip_is_exact(minilm_fresh, batch, tmp_path):
    model = minilm_fresh
    ids, mask = batch
    nn.init.normal_(model.step_embed.fc2.weight, std=0.05)  # saved weights must include it
    model.save_pretrained(tmp_path)
    register_auto_classes()
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is WarmStartDenoiser
    assert loaded.lm_head.decoder.weight is loaded.get_input_embeddings().weight
    t = torch.tensor([0.2, 0.8])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, t, mask), model(ids, t, mask), rtol=0, atol=0)


@torch.no_grad()
def test_masked_lm_checkpoint_keeps_its_head(tiny_mlm_folder, tmp_path):
    model, tokenizer = warm_start(tiny_mlm_folder)
    assert model.config.inner_head == "checkpoint" and model.lm_head is None
    reference = BertForMaskedLM.from_pretrained(tiny_mlm_folder).eval()
    ids = tokenizer(["a [MASK] b"], return_tensors="pt")["input_ids"]
    torch.testing.assert_close(model(ids, torch.tensor([0.7])), reference(input_ids=ids).logits,
                               rtol=0, atol=0)
    model.save_pretrained(tmp_path)
    loaded = WarmStartDenoiser.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(ids, torch.tensor([0.7])), model(ids, torch.tensor([0.7])),
                               rtol=0, atol=0)
    # head="new" ignores the checkpoint's head
    fresh = WarmStartDenoiser.from_encoder(tiny_mlm_folder, tokenizer=tokenizer, head="new")
    assert fresh.config.inner_head == "new" and fresh.lm_head is not None


def test_block_parts_resolve_in_every_layer(tiny_mlm_folder):
    from peft import LoraConfig, get_peft_model

    model, _ = warm_start(tiny_mlm_folder)
    parts = model.block_parts()
    assert (parts.q, parts.k, parts.v, parts.o) == (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
    )
    blocks = model.blocks()
    assert len(blocks) == 2
    paths = {id(m): n for n, m in model.named_modules()}
    names = []
    for block in blocks:
        for field in ("q", "k", "v", "o"):
            assert isinstance(block.get_submodule(getattr(parts, field)), nn.Linear)
            names.append(f"{paths[id(block)]}.{getattr(parts, field)}")
        up, down = block.get_submodule(parts.up), block.get_submodule(parts.down)
        assert isinstance(up, nn.Linear) and isinstance(down, nn.Linear)
        assert up.in_features == down.out_features == 32 and up.out_features == down.in_features
        block.get_submodule(parts.attention)
        block.get_submodule(parts.ffn)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=names))
    assert peft_model.get_nb_trainable_parameters()[0] == 8 * 2 * (32 * 2)


def test_gradient_checkpointing_same_gradients(tiny_mlm_folder):
    model, _ = warm_start(tiny_mlm_folder, head="new")
    model.train()
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    ids = torch.randint(1000, 2000, (2, 8), generator=torch.Generator().manual_seed(0))

    def grads():
        model.zero_grad()
        model(ids, torch.tensor([0.3, 0.6])).logsumexp(-1).mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    reference = grads()
    calls = []
    for block in model.blocks():
        block.attention.register_forward_hook(lambda *a: calls.append(1))
    model.activation_checkpointing_enable()
    checkpointed = grads()
    assert len(calls) == 2 * len(model.blocks())
    assert reference.keys() == checkpointed.keys()
    for name in reference:
        torch.testing.assert_close(checkpointed[name], reference[name], rtol=1e-5, atol=1e-6)


def test_bad_requests(tiny_mlm_folder, tmp_path):
    with pytest.raises(UsageError, match="no masked-LM head"):
        WarmStartDenoiser.from_encoder(minilm_path(), head="checkpoint")
    with pytest.raises(UsageError, match="head must be"):
        WarmStartDenoiser.from_encoder(tiny_mlm_folder, head="mlm")
    with pytest.raises(LdpError, match="cannot load"):
        warm_start(tmp_path / "nothing-here")


def test_prefix_kv_hook(tiny_mlm_folder):
    model, _ = warm_start(tiny_mlm_folder, head="new")
    ids = torch.randint(1000, 2000, (2, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[:, 6:] = 0
    with torch.no_grad():
        base = model(ids, None, mask)
    k = torch.randn(1, 4, 3, 8, requires_grad=True)
    v = torch.randn(1, 4, 3, 8, requires_grad=True)
    seen = []

    def prefix(query):
        seen.append(tuple(query.shape))
        return k.expand(query.shape[0], -1, -1, -1), v.expand(query.shape[0], -1, -1, -1)

    model.set_prefix_kv(1, prefix)
    assert model.blocks()[1].get_submodule(model.block_parts().self_attention).prefix_kv is prefix
    out = model(ids, None, mask)
    assert seen == [(2, 4, 9, 8)]
    assert not torch.allclose(out, base)
    out.logsumexp(-1).mean().backward()
    assert k.grad is not None and k.grad.abs().sum() > 0 and v.grad.abs().sum() > 0
    with torch.no_grad():
        changed = ids.clone()
        changed[:, 7] += 1  # a padded position: still invisible behind the prefix
        torch.testing.assert_close(model(changed, None, mask)[:, :6], out[:, :6].detach())
        assert not any("prefix" in name for name in model.state_dict())
        model.set_prefix_kv(1, None)
        torch.testing.assert_close(model(ids, None, mask), base, rtol=0, atol=0)
