"""Weight-LoRA composition by peft's weighted merge: the merged update is the weighted sum."""

from __future__ import annotations

import pytest
import torch
from ldp.errors import UsageError
from ldp.methods import base_fingerprint, get_method
from ldp.methods.merge import MERGED_NAME, merge_weight_lora

from .conftest import make_tiny


def _save(tmp_path, name, seed, base_hash, method="weight-lora"):
    m = get_method(method)
    model = m.attach(make_tiny(), m.build_config({"r": 4} if method == "weight-lora" else {}), base_hash=base_hash)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.save_adapter(tmp_path / name, base_name="test/tiny")


def _delta(model, adapter):
    from peft.tuners.lora import LoraLayer

    layer = next(m for m in model.base.modules() if isinstance(m, LoraLayer))
    return layer.get_delta_weight(adapter)


def test_merged_update_is_the_weighted_sum(tmp_path, batch):
    ids, t, _ = batch
    h = base_fingerprint(make_tiny())
    folders = {"a": _save(tmp_path, "a", 1, h), "b": _save(tmp_path, "b", 2, h)}
    merged = merge_weight_lora(make_tiny(), folders, {"a": 0.7, "b": 0.3})
    assert merged.peft_model.active_adapter == MERGED_NAME
    expected = 0.7 * _delta(merged, "default") + 0.3 * _delta(merged, "ldp_1")
    torch.testing.assert_close(_delta(merged, MERGED_NAME), expected, rtol=1e-5, atol=1e-6)
    alone = merge_weight_lora(make_tiny(), {"a": folders["a"]}, {"a": 1.0})
    from ldp.methods import load_adapter

    single = load_adapter(make_tiny(), folders["a"])
    torch.testing.assert_close(alone(ids, t), single(ids, t), rtol=1e-5, atol=1e-5)


def test_merge_refuses_other_methods_bases_and_names(tmp_path):
    h = base_fingerprint(make_tiny())
    good = _save(tmp_path, "a", 1, h)
    other = _save(tmp_path, "o", 2, base_fingerprint(make_tiny(seed=3)))
    bitfit = _save(tmp_path, "bf", 3, h, method="bitfit")
    with pytest.raises(UsageError, match="another base"):
        merge_weight_lora(make_tiny(), {"a": good, "o": other}, {"a": 0.5, "o": 0.5})
    with pytest.raises(UsageError, match="not weight-lora"):
        merge_weight_lora(make_tiny(), {"a": good, "bf": bitfit}, {"a": 1.0})
    with pytest.raises(UsageError, match="unknown adapter"):
        merge_weight_lora(make_tiny(), {"a": good}, {"z": 1.0})
