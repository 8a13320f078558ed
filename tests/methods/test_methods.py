"""Every method x every backbone: the shared interface (attach, trainable
parameters, adapter-only save/load in the registry's peft-style file layout).

Backbones: the test-local ``tiny``, the native transformer and the warm-started BERT wrapper, all
at hidden 32. Small method configs keep it fast; defaults are checked in ``test_registry.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from ldp.errors import UsageError
from ldp.methods import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    METHOD_NAMES,
    get_method,
    load_adapter,
)
from ldp.models.denoiser import Denoiser
from safetensors.torch import load_file

from .conftest import BACKBONES

SMALL = {
    # fp32 base: compared bit for bit with the plain base (`auto` is bf16 on CPUs with native bf16)
    "lora-diffusion": {"ranks": [8, 4, 2], "time_embed_dim": 16, "num_steps": 30, "base_dtype": "fp32"},
    "weight-lora": {"r": 4, "alpha": 8.0},
    "prefix": {"num_virtual_tokens": 4},
    "adapters": {"bottleneck": 8},
    "bitfit": {},
    "full": {},
}
IDENTITY_AT_INIT = {"lora-diffusion", "weight-lora", "adapters", "bitfit", "full"}
MATRIX = [(b, m) for b in BACKBONES for m in METHOD_NAMES]


def _inputs(vocab: int, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (2, 10), generator=g)
    ids[:, 7:] = 3  # [MASK]
    inst = torch.zeros(2, 10, dtype=torch.bool)
    inst[:, :4] = True
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, -1] = 0
    return ids, torch.tensor([0.9, 0.4]), mask, inst


def _attach(backbone: str, method: str, seed: int = 0):
    base = BACKBONES[backbone](seed)
    m = get_method(method)
    return base, m.attach(base, m.build_config(SMALL[method]))


def _perturb(model, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
        for t in model._adapter_tensors().values():  # frozen adapter statistics travel too
            if not isinstance(t, torch.nn.Parameter) and t.is_floating_point():
                t.mul_(1.0 + 0.1 * torch.rand(t.shape, generator=g))


@pytest.mark.parametrize("backbone, method", MATRIX)
def test_fresh_adapter_and_the_base(backbone, method):
    ids, t, mask, inst = _inputs(BACKBONES[backbone]().vocab_size)
    expected = BACKBONES[backbone](0)(ids, t, mask)
    _, model = _attach(backbone, method)
    assert isinstance(model, Denoiser)  # the diffusion loss and sampler take it unchanged
    got = model(ids, t, mask, steps=None, instruction_mask=inst)
    assert got.shape == expected.shape
    if method in IDENTITY_AT_INIT:
        assert torch.equal(got, expected)
    else:  # prefix: the P extra keys share every softmax, so a fresh prefix changes outputs
        assert not torch.allclose(got, expected, atol=1e-4)
        model.detach_from_base()
        assert torch.equal(model.base(ids, t, mask), expected)


@pytest.mark.parametrize("backbone, method", MATRIX)
def test_training_touches_only_the_adapter(backbone, method):
    _, model = _attach(backbone, method)
    ids, t, mask, inst = _inputs(model.vocab_size)
    params = model.trainable_parameters()
    trainable = {id(p) for p in params}
    assert params and len(trainable) == len(params)
    # requires_grad is set on exactly the listed parameters (nothing leaks into the optimiser)
    assert {id(p) for p in model.parameters() if p.requires_grad} == trainable
    snapshot = [(p, p.detach().clone()) for p in model.base.parameters() if id(p) not in trainable]
    start = [p.detach().clone() for p in params]
    model.train()
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(3):
        logits = model(ids, t, mask, instruction_mask=inst)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
        opt.zero_grad()
        loss.backward()
        for p in model.parameters():
            assert (p.grad is not None) <= (id(p) in trainable)
        opt.step()
    assert all(torch.equal(p, before) for p, before in snapshot)
    assert any(not torch.equal(p, s) for p, s in zip(params, start))
    if method == "full":
        assert not snapshot
    counts = model.parameter_counts()
    assert counts["trainable"] == sum(p.numel() for p in params)


@pytest.mark.parametrize("backbone, method", MATRIX)
def test_save_load_roundtrip_gives_identical_logits(tmp_path, backbone, method):
    _, model = _attach(backbone, method)
    _perturb(model)
    ids, t, mask, inst = _inputs(model.vocab_size)
    model.eval()
    expected = model(ids, t, mask, instruction_mask=inst)
    folder = model.save_adapter(tmp_path / "a", base_name=f"test/{backbone}")
    meta = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    assert meta["ldp_method"] == method and meta["base_model_name_or_path"] == f"test/{backbone}"
    assert meta["peft_type"] == get_method(method).peft_type
    assert meta["base_hash"] == model.base_hash
    saved = load_file(str(folder / ADAPTER_WEIGHTS_NAME))
    assert set(saved) == set(model.adapter_state_dict())
    if method != "full":  # only the adapter's own weights (and its frozen statistics) are written
        buffers = sum(
            t.numel() for t in model._adapter_tensors().values()
            if not isinstance(t, torch.nn.Parameter)
        )
        assert sum(v.numel() for v in saved.values()) == model.parameter_counts()["trainable"] + buffers
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))

    loaded = load_adapter(BACKBONES[backbone](0), folder)
    assert type(loaded) is type(model)
    loaded.eval()
    assert torch.equal(loaded(ids, t, mask, instruction_mask=inst), expected)


@pytest.mark.parametrize(
    "backbone, method", [(b, m) for b in ("native", "bert") for m in METHOD_NAMES]
)
def test_loading_onto_another_base_is_refused(tmp_path, backbone, method):
    _, model = _attach(backbone, method)
    folder = model.save_adapter(tmp_path / "a", base_name="bases/x@1")
    other = BACKBONES[backbone](seed=1)
    with pytest.raises(UsageError, match="refusing"):
        load_adapter(other, folder)
    # a base whose weights changed by one value is another base too
    same = BACKBONES[backbone](seed=0)
    with torch.no_grad():
        next(same.parameters()).view(-1)[0] += 1e-3
    with pytest.raises(UsageError, match="bases/x@1"):
        load_adapter(same, folder)


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_adapter_state_dict_holds_no_base_weights(backbone):
    for method in METHOD_NAMES:
        if method == "full":
            continue
        base, model = _attach(backbone, method)
        base_ids = {p.data_ptr() for p in base.parameters() if not p.requires_grad}
        assert not {t.data_ptr() for t in model.adapter_state_dict().values()} & base_ids, method
