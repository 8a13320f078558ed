"""Method-specific behaviour of the hand-written baselines: adapters, bitfit, prefix, full."""

from __future__ import annotations

import pytest
import torch
from ldp.methods import get_method
from ldp.methods.prefix import PrefixSelfAttention
from torch.nn import functional as F

from .conftest import make_bert, make_native


def test_houlsby_adapter_sits_after_each_sublayer_with_an_inner_residual():
    base = make_native()
    model = get_method("adapters").attach(base, {"bottleneck": 8})
    assert [sorted(block) for block in model.layers] == [["attention", "ffn"]] * 2
    adapter = model.layers[0]["ffn"]
    with torch.no_grad():
        adapter.up.weight.normal_()
    y = torch.randn(2, 5, 32)
    ref = y + adapter.up(F.gelu(adapter.down(y)))
    torch.testing.assert_close(adapter(y), ref)
    # the hook really is on block 0's FFN: its output is replaced by adapter(output)
    x = torch.randn(2, 5, 32)
    direct = base.layers[0].mlp.forward(x)  # .forward bypasses hooks
    torch.testing.assert_close(base.layers[0].mlp(x), adapter(direct))


def test_houlsby_on_bert_hooks_the_dropout_before_the_residual_layernorm():
    base = make_bert()
    model = get_method("adapters").attach(base, {"bottleneck": 8})
    with torch.no_grad():
        model.layers[1]["attention"].up.weight.normal_()
    ids = torch.randint(4, 64, (1, 6))
    assert not torch.equal(model(ids), make_bert()(ids))
    model.remove_hooks()
    assert torch.equal(model(ids), make_bert()(ids))


@pytest.mark.parametrize("make", [make_native, make_bert])
def test_bitfit_trains_exactly_the_bias_terms(make):
    base = make()
    model = get_method("bitfit").attach(base)
    biases = {
        id(m.bias)
        for m in base.modules()
        if isinstance(getattr(m, "bias", None), torch.nn.Parameter)
    }
    assert {id(p) for p in model.trainable_parameters()} == biases
    assert all(name.endswith("bias") for name in model.adapter_state_dict())
    no_norms = get_method("bitfit").attach(make(), {"include_norms": False})
    assert no_norms.parameter_counts()["trainable"] < model.parameter_counts()["trainable"]


def test_full_trains_and_saves_every_weight(tmp_path):
    base = make_native()
    model = get_method("full").attach(base)
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in base.parameters()}
    assert set(model.adapter_state_dict()) == set(base.state_dict())
    assert model.named_trainable_parameters().keys() == {
        f"base.{n}" for n, _ in base.named_parameters()
    }


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_on_bert_matches_explicit_attention_and_keeps_state_dict_keys(attn):
    base = make_bert()
    base.backbone.config._attn_implementation = attn
    keys = set(base.state_dict())
    model = get_method("prefix").attach(base, {"num_virtual_tokens": 3, "init_std": 0.5})
    assert set(base.state_dict()) == keys  # q/k/v reused under the same names
    layer = base.blocks()[0].attention.self
    assert isinstance(layer, PrefixSelfAttention)
    x = torch.randn(2, 5, 32)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, ..., -2:] = False
    hf_mask = mask if attn == "sdpa" else torch.where(mask, 0.0, torch.finfo(torch.float32).min)
    out, _ = layer(x, attention_mask=hf_mask)
    # explicit reference: softmax over [prefix keys ; keys] with the prefix always visible
    pk, pv = model.prefix_keys[0], model.prefix_values[0]
    q = layer.query(x).view(2, 5, 4, 8).transpose(1, 2)
    k = torch.cat([pk.expand(2, -1, -1), layer.key(x)], 1).view(2, 8, 4, 8).transpose(1, 2)
    v = torch.cat([pv.expand(2, -1, -1), layer.value(x)], 1).view(2, 8, 4, 8).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / 8**0.5
    full_mask = torch.cat([torch.ones(2, 1, 5, 3, dtype=torch.bool), mask], -1)
    scores = scores.masked_fill(~full_mask, float("-inf"))
    ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 5, 32)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # the whole model honours padding: changing a padded token leaves other rows' positions alone
    ids = torch.randint(4, 64, (2, 6))
    am = torch.ones(2, 6, dtype=torch.long)
    am[:, -1] = 0
    ids2 = ids.clone()
    ids2[:, -1] = 5
    torch.testing.assert_close(model(ids, None, am)[:, :-1], model(ids2, None, am)[:, :-1])


def test_prefix_on_native_uses_its_hook_and_gets_gradients():
    base = make_native()
    model = get_method("prefix").attach(base, {"num_virtual_tokens": 5})
    assert base.layers[0].attn.prefix_kv is not None
    assert "prefix_keys" not in " ".join(base.state_dict())
    ids = torch.randint(4, 64, (2, 6))
    model(ids, torch.tensor([0.5, 0.5])).sum().backward()
    assert model.prefix_keys.grad.abs().sum() > 0 and model.prefix_values.grad.abs().sum() > 0
    model.detach_from_base()
    assert base.layers[0].attn.prefix_kv is None


@pytest.mark.parametrize("make", [make_native, make_bert])
def test_prefix_token_init_copies_the_bases_own_key_value_projections(make):
    base = make()
    torch.manual_seed(7)
    model = get_method("prefix").attach(base, {"num_virtual_tokens": 3, "init": "tokens"})
    # rebuild the reference: same random tokens, the attention input of block 1, its k/v Linear
    torch.manual_seed(7)
    ids = torch.randint(0, base.vocab_size - 1, (1, 3))
    ids = ids + (ids >= base.mask_token_id).long()
    model.detach_from_base()
    parts = base.block_parts()
    attention = base.blocks()[1].get_submodule(parts.q.rpartition(".")[0])
    grabbed = {}

    def grab(module, args, kwargs):
        grabbed["x"] = args[0] if args else kwargs["hidden_states"]

    handle = attention.register_forward_pre_hook(grab, with_kwargs=True)
    base.hidden_states(ids)
    handle.remove()
    k_lin = base.blocks()[1].get_submodule(parts.k)
    v_lin = base.blocks()[1].get_submodule(parts.v)
    torch.testing.assert_close(model.prefix_keys[1], k_lin(grabbed["x"])[0])
    torch.testing.assert_close(model.prefix_values[1], v_lin(grabbed["x"])[0])


@pytest.mark.parametrize("make", [make_native, make_bert])
def test_gated_prefix_is_the_identity_at_init_then_trains_its_gates_first(make):
    ids = torch.randint(4, 64, (2, 6))
    t = torch.tensor([0.5, 0.5])
    reference = make()(ids, t)
    model = get_method("prefix").attach(make(), {"num_virtual_tokens": 4, "attention": "gated", "init_std": 0.5})
    assert model.prefix_gates.shape == (2, 4) and float(model.prefix_gates.detach().abs().sum()) == 0.0
    torch.testing.assert_close(model(ids, t), reference)  # joint prefixes change H at init
    assert not torch.allclose(
        get_method("prefix").attach(make(), {"num_virtual_tokens": 4, "init_std": 0.5})(ids, t), reference
    )
    model(ids, t).pow(2).sum().backward()
    # tanh(0) = 0 hides the prefix from the loss, so only the gates move first
    assert model.prefix_gates.grad.abs().sum() > 0
    assert float(model.prefix_keys.grad.abs().sum()) == 0.0
    assert any(p is model.prefix_gates for p in model.trainable_parameters())


def test_gated_prefix_on_bert_matches_the_written_formula():
    base = make_bert()
    model = get_method("prefix").attach(base, {"num_virtual_tokens": 3, "attention": "gated", "init_std": 0.5})
    with torch.no_grad():
        model.prefix_gates.normal_()
    layer = base.blocks()[0].attention.self
    x = torch.randn(2, 5, 32)
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    mask[1, ..., -2:] = False
    out, _ = layer(x, attention_mask=mask)

    def heads(t, n):
        return t.reshape(-1, n, 4, 8).transpose(1, 2)

    q, k, v = heads(layer.query(x), 5), heads(layer.key(x), 5), heads(layer.value(x), 5)
    pk = heads(model.prefix_keys[0].expand(2, -1, -1), 3)
    pv = heads(model.prefix_values[0].expand(2, -1, -1), 3)
    own = ((q @ k.transpose(-1, -2) / 8**0.5).masked_fill(~mask, float("-inf")).softmax(-1)) @ v
    prefix = (q @ pk.transpose(-1, -2) / 8**0.5).softmax(-1) @ pv
    gate = torch.tanh(model.prefix_gates[0]).view(1, 4, 1, 1)
    ref = (own + gate * prefix).transpose(1, 2).reshape(2, 5, 32)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_gated_prefix_saves_and_loads_its_gates(tmp_path):
    from ldp.methods import load_adapter

    model = get_method("prefix").attach(make_native(), {"num_virtual_tokens": 2, "attention": "gated"})
    with torch.no_grad():
        model.prefix_gates.normal_()
    model.save_adapter(tmp_path, base_name="test", base_hash="h")
    loaded = load_adapter(make_native(), tmp_path, base_hash="h")
    torch.testing.assert_close(loaded.prefix_gates, model.prefix_gates)
    ids = torch.randint(4, 64, (1, 6))
    torch.testing.assert_close(loaded(ids, torch.tensor([0.3])), model(ids, torch.tensor([0.3])))


@pytest.mark.parametrize("make", [make_native, make_bert])
def test_reparameterised_prefix_is_the_mlp_of_one_embedding_and_trains_through_it(make):
    model = get_method("prefix").attach(make(), {"num_virtual_tokens": 3, "reparam_hidden": 16})
    assert model.prefix_keys is None  # no raw prefixes: every layer's come from the MLP
    d, layers = model.prefix_embedding.shape[1], len(model.blocks())
    out = model.prefix_mlp_out(torch.tanh(model.prefix_mlp_in(model.prefix_embedding)))  # (P, L*2*d)
    per_layer = out.view(3, layers, 2, d)
    for index in range(layers):
        keys, values = model.layer_prefix(index)
        torch.testing.assert_close(keys, per_layer[:, index, 0])
        torch.testing.assert_close(values, per_layer[:, index, 1])
    counts = model.parameter_counts()
    assert counts["trainable"] == 3 * d + (d * 16 + 16) + (16 * layers * 2 * d + layers * 2 * d)
    ids = torch.randint(4, 64, (2, 6))
    model(ids, torch.tensor([0.5, 0.5])).sum().backward()
    assert model.prefix_embedding.grad.abs().sum() > 0 and model.prefix_mlp_in.weight.grad.abs().sum() > 0
    # the prefix reaches the attention: moving the MLP's output bias changes the output
    with torch.no_grad():
        before = model(ids, torch.tensor([0.5, 0.5]))
        model.prefix_mlp_out.bias.normal_()
        assert not torch.allclose(model(ids, torch.tensor([0.5, 0.5])), before)


def test_reparameterised_prefix_saves_and_loads_its_mlp(tmp_path):
    from ldp.methods import load_adapter

    model = get_method("prefix").attach(make_native(), {"num_virtual_tokens": 2, "reparam_hidden": 8})
    with torch.no_grad():
        model.prefix_mlp_out.bias.normal_()
    model.save_adapter(tmp_path, base_name="test", base_hash="h")
    loaded = load_adapter(make_native(), tmp_path, base_hash="h")
    assert set(loaded.adapter_state_dict()) == set(model.adapter_state_dict())
    ids = torch.randint(4, 64, (1, 6))
    torch.testing.assert_close(loaded(ids, torch.tensor([0.3])), model(ids, torch.tensor([0.3])))


@pytest.mark.parametrize("bad", [{"reparam_hidden": -1}, {"reparam_hidden": 8, "init": "tokens"}])
def test_prefix_refuses_a_bad_reparameterisation(bad):
    from ldp.errors import UsageError

    with pytest.raises((ValueError, TypeError, UsageError), match="reparam_hidden"):
        get_method("prefix").build_config(bad)
