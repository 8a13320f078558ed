"""Weight LoRA through peft: full target coverage, peft-loadable artifacts."""

from __future__ import annotations

import peft
import pytest
import torch
from ldp.errors import UsageError
from ldp.methods import get_method, load_adapter
from peft.tuners.lora import LoraLayer

from .conftest import BACKBONES, make_native

METHOD = get_method("weight-lora")


@pytest.mark.parametrize("backbone", ["native", "bert"])
def test_peft_from_pretrained_loads_the_artifact_with_identical_logits(tmp_path, backbone):
    make = BACKBONES[backbone]
    model = METHOD.attach(make(0), METHOD.build_config({"r": 4, "alpha": 16.0}))
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_(0, 0.2)
    ids = torch.randint(4, 64, (2, 9))
    t = torch.tensor([0.3, 0.8])
    expected = model(ids, t)
    assert not torch.allclose(expected, make(0)(ids, t))
    folder = model.save_adapter(tmp_path / "lora", base_name="bases/tiny@1")

    with pytest.warns(UserWarning, match="Unexpected keyword arguments"):  # our ldp_* keys
        peft_model = peft.PeftModel.from_pretrained(make(0), str(folder))
    peft_model.eval()
    assert torch.equal(peft_model(ids, t), expected)
    assert peft_model.peft_config["default"].r == 4

    ours = load_adapter(make(0), folder)
    assert torch.equal(ours(ids, t), expected)
    # loaded adapters stay trainable (training can resume from an artifact)
    assert all(p.requires_grad for p in ours.trainable_parameters())


def test_default_config_targets_q_k_v_o_of_every_layer_with_rank_64():
    base = make_native()
    model = METHOD.attach(base)
    layers = [m for m in base.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 4 * len(base.blocks())
    assert all(m.lora_A["default"].weight.shape == (64, 32) for m in layers)
    assert model.parameter_counts()["trainable"] == len(layers) * 2 * 64 * 32


@pytest.mark.parametrize("backbone", ["native", "bert"])
def test_feed_forward_targets_adapt_up_and_down_of_every_block(tmp_path, backbone):
    make = BACKBONES[backbone]
    base = make(0)
    model = METHOD.attach(base, METHOD.build_config({"r": 4, "targets": ["q", "k", "v", "o", "up", "down"]}))
    parts = base.block_parts()
    adapted = {n for n, m in base.named_modules() if isinstance(m, LoraLayer)}
    assert len(adapted) == 6 * len(base.blocks())
    for block in base.blocks():
        assert isinstance(block.get_submodule(parts.up), LoraLayer)
        assert isinstance(block.get_submodule(parts.down), LoraLayer)
    ids, t = torch.randint(4, 64, (2, 9)), torch.tensor([0.3, 0.8])
    assert torch.equal(model(ids, t), make(0)(ids, t))  # B starts at zero: exactly the base
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_(0, 0.2)
    expected = model(ids, t)
    folder = model.save_adapter(tmp_path / "lora", base_name="bases/tiny@1")
    assert torch.equal(load_adapter(make(0), folder)(ids, t), expected)


def test_missing_target_module_is_refused_not_silently_skipped():
    base = make_native()
    del base.layers[1].attn.o_proj  # one of the 8 intended targets no longer exists
    with pytest.raises(UsageError, match="matched 7 of 8 target modules"):
        METHOD.attach(base)


def test_no_target_at_all_is_refused():
    base = make_native()
    for block in base.layers:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            delattr(block.attn, name)
    with pytest.raises(UsageError, match="weight-lora"):
        METHOD.attach(base)


def test_bad_config_is_refused():
    with pytest.raises(UsageError, match="unknown projection"):
        METHOD.build_config({"targets": ["q", "gate"]})
    with pytest.raises(UsageError, match="r must be"):
        METHOD.build_config({"r": 0})


@pytest.mark.parametrize("backbone", ["native", "bert"])
def test_merged_for_inference_gives_the_same_logits_and_train_takes_the_merge_out(backbone):
    make = BACKBONES[backbone]
    model = METHOD.attach(make(0), METHOD.build_config({"r": 4, "alpha": 16.0, "dropout": 0.0}))
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_(0, 0.2)
    ids = torch.randint(4, 64, (2, 9))
    t = torch.tensor([0.3, 0.8])
    model.eval()
    expected = model(ids, t)
    before = {n: p.detach().clone() for n, p in model.base.named_parameters() if "lora_" not in n}
    assert model.merge_for_inference() is model and model.merged
    changed = [n for n, p in model.base.named_parameters() if n in before and not torch.equal(p, before[n])]
    assert len(changed) == 4 * len(model.blocks())  # every target layer's weight holds B A now
    torch.testing.assert_close(model(ids, t), expected, atol=1e-5, rtol=1e-5)

    model.train()  # training must see the factors, not a merged base
    assert not model.merged
    for n, p in model.base.named_parameters():
        if n in before:
            torch.testing.assert_close(p, before[n], atol=1e-6, rtol=0)
    model(ids, t).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.trainable_parameters())


def test_load_adapted_returns_a_merged_weight_lora(tmp_path):
    from types import SimpleNamespace

    from ldp.bases import LoadedBase, load_adapted
    from ldp.methods.base import base_fingerprint

    model = METHOD.attach(make_native(0), METHOD.build_config({"r": 4}))
    folder = model.save_adapter(tmp_path / "lora", base_name="bases/tiny@1")
    base = make_native(0)
    loaded = LoadedBase(base, None, SimpleNamespace(ref="bases/tiny@1"), base_fingerprint(base))
    adapted, _, info = load_adapted(str(folder), loaded=loaded)
    assert adapted.merged and not adapted.training and info["method"] == "weight-lora"
