"""Composition of final-state adapters over one shared base forward (paper Eqs. 21-23)."""

from __future__ import annotations

import pytest
import torch
from ldp.errors import UsageError
from ldp.methods import base_fingerprint, get_method
from ldp.methods.compose import Composition, load_composition, weights_from_mapping
from ldp.models.denoiser import Denoiser

from .conftest import make_tiny

SMALL = {"ranks": [8, 4, 2], "time_embed_dim": 16, "num_steps": 30}


def adapter(base, seed, base_hash=None, **cfg):
    """A lora-diffusion adapter on ``base`` with random (non-identity) weights."""
    method = get_method("lora-diffusion")
    model = method.attach(base, method.build_config({**SMALL, **cfg}), base_hash=base_hash)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return model.eval()


@pytest.fixture
def pair(tiny):
    h = base_fingerprint(tiny)
    return tiny, adapter(tiny, 1, h), adapter(tiny, 2, h)


def test_single_adapter_mix_is_exactly_that_adapter(pair, batch):
    base, a, _ = pair
    ids, t, inst = batch
    alone = a(ids, t, instruction_mask=inst)
    comp = Composition(base, {"a": a})
    for weights in (None, torch.tensor([1.0]), torch.ones(2, 1), weights_from_mapping(["a"], {"a": 1.0})):
        got = comp(ids, t, instruction_mask=inst, weights=weights)
        assert torch.equal(got, alone)
    # integer steps give the same as t = k / T
    steps = torch.ceil(t * 30 - 1e-3).long()
    assert torch.equal(comp(ids, steps=steps, instruction_mask=inst), a(ids, steps=steps, instruction_mask=inst))


def test_adapters_reading_different_contexts_compose(tiny, batch):
    """An adapter whose Enc(c) reads every block and one that reads the final states only share
    one base pass: each weighted alone gives exactly its own output, and the half-half mix is
    the sum of the two perturbations."""
    ids, t, inst = batch
    h = base_fingerprint(tiny)
    blocks, final = adapter(tiny, 1, h), adapter(tiny, 2, h, context="final")
    assert blocks.context_blocks and not final.context_blocks
    comp = Composition(tiny, {"blocks": blocks, "final": final})
    assert comp.context_blocks == blocks.context_blocks
    alone_b = blocks(ids, t, instruction_mask=inst)
    alone_f = final(ids, t, instruction_mask=inst)
    assert torch.equal(comp(ids, t, instruction_mask=inst, weights=torch.tensor([1.0, 0.0])), alone_b)
    assert torch.equal(comp(ids, t, instruction_mask=inst, weights=torch.tensor([0.0, 1.0])), alone_f)
    base = tiny.hidden_states(ids, t)
    mixed = comp.hidden_states(ids, t, instruction_mask=inst, weights=torch.tensor([0.5, 0.5]))
    want = base + 0.5 * (blocks.hidden_states(ids, t, instruction_mask=inst) - base) + 0.5 * (
        final.hidden_states(ids, t, instruction_mask=inst) - base
    )
    torch.testing.assert_close(mixed, want, rtol=0, atol=1e-5)


def test_attention_pooled_adapters_keep_their_own_encoding_in_a_mix(tiny, batch):
    """Two adapters with ``pooling: attention`` read the same blocks with different learned
    queries: a half-half mix is the sum of the two adapters' own perturbations (were the
    encoding shared, the second adapter would read the first one's Enc(c))."""
    ids, t, inst = batch
    h = base_fingerprint(tiny)
    a, b = (adapter(tiny, seed, h, pooling="attention") for seed in (1, 2))
    assert not torch.equal(a.context_queries, b.context_queries)
    comp = Composition(tiny, {"a": a, "b": b})
    base = tiny.hidden_states(ids, t)
    mixed = comp.hidden_states(ids, t, instruction_mask=inst, weights=torch.tensor([0.5, 0.5]))
    want = base + 0.5 * (a.hidden_states(ids, t, instruction_mask=inst) - base) + 0.5 * (
        b.hidden_states(ids, t, instruction_mask=inst) - base
    )
    torch.testing.assert_close(mixed, want, rtol=0, atol=1e-5)


def test_mix_is_the_weighted_sum_of_perturbations_per_row(pair, batch):
    base, a, b = pair
    ids, t, inst = batch
    comp = Composition(base, {"a": a, "b": b})
    assert comp.names == ["a", "b"]
    w = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    got = comp.hidden_states(ids, t, instruction_mask=inst, weights=w)
    # row 0 uses only a: a alone (to float rounding: a alone runs on one row, the mix on two)
    torch.testing.assert_close(
        got[:1], a.hidden_states(ids[:1], t[:1], instruction_mask=inst[:1]), rtol=0, atol=1e-5
    )
    # row 1: H + 0.3 (H_a - H) + 0.7 (H_b - H)
    h = base.hidden_states(ids[1:], t[1:])
    ha = a.hidden_states(ids[1:], t[1:], instruction_mask=inst[1:])
    hb = b.hidden_states(ids[1:], t[1:], instruction_mask=inst[1:])
    torch.testing.assert_close(got[1:], h + 0.3 * (ha - h) + 0.7 * (hb - h), rtol=0, atol=1e-5)
    # uniform = None = (J,) halves
    torch.testing.assert_close(
        comp.hidden_states(ids, t, instruction_mask=inst),
        comp.hidden_states(ids, t, instruction_mask=inst, weights=torch.tensor([0.5, 0.5])),
        rtol=0, atol=0,
    )


def test_mix_at_positions_matches_the_full_mix_there_and_keeps_the_base_elsewhere(pair, batch):
    """A sampler reads H' at the masked positions of the block only: computing the mix there alone
    must give the same values there (the perturbation of a position depends only on H there,
    the step and Enc(c)), and leave the base's H everywhere else."""
    base, a, b = pair
    ids, t, inst = batch
    comp = Composition(base, {"a": a, "b": b})
    w = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    hidden, steps, blocks = comp.base_states(ids, t)
    full = comp.mix(hidden, steps, w, input_ids=ids, instruction_mask=inst, block_states=blocks)
    positions = torch.zeros(ids.shape, dtype=torch.bool)
    positions[0, -3:] = True
    positions[1, 2] = True
    part = comp.mix(
        hidden, steps, w, input_ids=ids, instruction_mask=inst, positions=positions,
        block_states=blocks,
    )
    torch.testing.assert_close(part[positions], full[positions], rtol=0, atol=1e-5)
    assert torch.equal(part[~positions], hidden[~positions])
    assert not torch.allclose(full[~positions], hidden[~positions])  # the full mix does perturb there


def test_mix_without_the_block_outputs_its_adapters_read_fails_with_one_line(pair, batch):
    base, a, b = pair
    ids, t, inst = batch
    comp = Composition(base, {"a": a, "b": b})
    assert comp.context_blocks, "the fixture's adapters should read block outputs"
    hidden, steps, blocks = comp.base_states(ids, t)
    partial = dict(list(blocks.items())[:-1])
    for given in (None, partial):
        with pytest.raises(UsageError, match=r"reads the outputs of blocks .*pass them as block_states"):
            comp.mix(hidden, steps, torch.tensor([[1.0, 0.0], [0.3, 0.7]]), input_ids=ids,
                     instruction_mask=inst, block_states=given)


def test_zero_weight_rows_skip_the_adapter(pair, batch, monkeypatch):
    base, a, b = pair
    ids, t, inst = batch
    comp = Composition(base, {"a": a, "b": b})
    seen = []
    real = type(b).perturbation

    def spy(self, hidden, *args, **kw):
        seen.append((self is b, hidden.shape[0]))
        return real(self, hidden, *args, **kw)

    monkeypatch.setattr(type(b), "perturbation", spy)
    comp(ids, t, instruction_mask=inst, weights=torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    assert seen == [(False, 2), (True, 1)]  # a on both rows, b on row 1 only
    seen.clear()
    comp(ids, t, instruction_mask=inst, weights=torch.tensor([1.0, 0.0]))
    assert seen == [(False, 2)]


def test_per_phase_weights_pick_the_rows_phase(pair, batch):
    base, a, b = pair
    ids, t, inst = batch  # t = 0.9 (early), 0.2 (late)
    comp = Composition(base, {"a": a, "b": b})
    per_phase = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]).expand(2, 3, 2)
    got = comp(ids, t, instruction_mask=inst, weights=per_phase)
    expect = comp(ids, t, instruction_mask=inst, weights=torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert torch.equal(got, expect)


def test_adapters_on_one_base_do_not_interfere(tiny, batch):
    ids, t, inst = batch
    h = base_fingerprint(tiny)
    a = adapter(tiny, 1, h)
    before = a(ids, t, instruction_mask=inst)
    b = adapter(tiny, 2, h)
    comp = Composition(tiny, {"a": a, "b": b})
    comp(ids, t, instruction_mask=inst)
    assert torch.equal(a(ids, t, instruction_mask=inst), before)
    assert not torch.equal(b(ids, t, instruction_mask=inst), before)
    assert torch.equal(tiny(ids, t), make_tiny()(ids, t))  # the base itself is untouched


def test_add_remove_keep_column_order(pair, batch):
    base, a, b = pair
    ids, t, inst = batch
    comp = Composition(base)
    comp.add("b", b)
    comp.add("a", a)
    assert comp.names == ["b", "a"]
    with pytest.raises(UsageError, match="already"):
        comp.add("a", a)
    only_a = comp(ids, t, instruction_mask=inst, weights=torch.tensor([0.0, 1.0]))
    comp.remove("b")
    assert comp.names == ["a"] and len(comp) == 1
    assert torch.equal(comp(ids, t, instruction_mask=inst), only_a)
    with pytest.raises(UsageError, match="no adapter 'b'"):
        comp.remove("b")
    comp.add("x.y/z@1", b)  # registry-style names are fine
    assert comp.names == ["a", "x.y/z@1"]


def test_refuses_other_base_and_non_composable(tiny):
    other = make_tiny(seed=5)
    foreign = adapter(other, 3)
    comp = Composition(tiny)
    with pytest.raises(UsageError, match="another base") as err:
        comp.add("foreign", foreign)
    assert "\n" not in str(err.value)
    bitfit = get_method("bitfit").attach(make_tiny())
    with pytest.raises(UsageError, match="cannot be composed"):
        comp.add("bitfit", bitfit)
    deep = adapter(make_tiny(), 4, inject_layers=[0])
    with pytest.raises(UsageError, match="final-state"):
        Composition(deep.base, {"deep": deep})


def test_bad_weights_are_refused(pair, batch):
    base, a, b = pair
    ids, t, inst = batch
    comp = Composition(base, {"a": a, "b": b})
    for bad, match in [
        (torch.ones(3), "weights must be"),
        (torch.ones(3, 2), "weights must be"),
        (torch.tensor([float("nan"), 1.0]), "finite"),
        (torch.ones(2, 2, 2), "per-phase"),
        ("auto", "router"),
        ("best", "weights must be"),
    ]:
        with pytest.raises(UsageError, match=match):
            comp(ids, t, instruction_mask=inst, weights=bad)
    with pytest.raises(UsageError, match="unknown adapter"):
        weights_from_mapping(comp.names, {"c": 1.0})
    with pytest.raises(UsageError, match="no adapters"):
        Composition(base)(ids, t)


def test_denoiser_protocol_and_gradient_reaches_weights(pair, batch):
    base, a, b = pair
    ids, t, inst = batch
    comp = Composition(base, {"a": a, "b": b})
    assert isinstance(comp, Denoiser)
    assert comp.mask_token_id == base.mask_token_id and comp.vocab_size == base.vocab_size
    w = torch.tensor([0.4, 0.6], requires_grad=True)
    comp(ids, t, instruction_mask=inst, weights=w).sum().backward()
    assert w.grad is not None and bool((w.grad != 0).all())
    assert all(p.grad is None for p in base.parameters())
    comp.train()
    assert not base.training and comp.training


def test_load_composition_from_folders(tmp_path, batch):
    ids, t, inst = batch
    base = make_tiny()
    h = base_fingerprint(base)
    for name, seed in (("a", 1), ("b", 2)):
        adapter(make_tiny(), seed, h).save_adapter(tmp_path / name, base_name="test/tiny")
    comp = load_composition(base, {"a": tmp_path / "a", "b": tmp_path / "b"})
    assert comp.names == ["a", "b"]
    alone = adapter(make_tiny(), 1, h)
    assert torch.equal(comp(ids, t, instruction_mask=inst, weights=torch.tensor([1.0, 0.0])),
                       alone(ids, t, instruction_mask=inst))
    adapter(make_tiny(seed=9), 3).save_adapter(tmp_path / "foreign", base_name="test/other")
    with pytest.raises(UsageError, match="must share one base"):
        load_composition(make_tiny(), {"a": tmp_path / "a", "foreign": tmp_path / "foreign"})
