"""The method registry, configs, fingerprints, step resolution, artifact validation, sizes."""

from __future__ import annotations

import json

import pytest
import torch
from ldp.config import build, load
from ldp.errors import IntegrityError, UsageError
from ldp.methods import (
    ADAPTER_WEIGHTS_NAME,
    METHOD_NAMES,
    base_fingerprint,
    get_method,
    load_adapter,
    resolve_steps,
)
from safetensors.torch import load_file, save_file

from .conftest import make_native, make_tiny


def test_every_method_is_registered_by_name_with_a_buildable_config():
    assert METHOD_NAMES == ("lora-diffusion", "weight-lora", "prefix", "adapters", "bitfit", "full")
    peft_types = set()
    for name in METHOD_NAMES:
        method = get_method(name)
        assert method.name == name
        config = build(method.config_cls, {})
        assert isinstance(config, method.config_cls)
        peft_types.add(method.peft_type)
    assert len(peft_types) == len(METHOD_NAMES)
    assert get_method("weight_lora") is get_method("Weight-LoRA")
    with pytest.raises(UsageError, match="unknown method 'lora'.*lora-diffusion"):
        get_method("lora")


def test_default_configs_follow_the_design():
    ld = get_method("lora-diffusion").build_config()
    assert (ld.ranks, ld.scales, ld.modules_per_phase, ld.share) == (
        [64, 32, 8],
        [1.0, 0.5, 0.25],
        2,
        "nested",
    )
    assert (ld.lambda_rank, ld.lambda_orth, ld.num_steps, ld.inject_layers) == (
        0.001,
        0.001,
        100,
        [],
    )
    assert ld.step_ranges() == [(67, 100), (34, 66), (1, 33)]  # early t > 2T/3, late t <= T/3
    assert get_method("weight-lora").build_config().r == 64
    assert get_method("prefix").build_config().num_virtual_tokens == 32
    assert get_method("adapters").build_config().bottleneck == 256


def test_configs_load_from_yaml_with_overrides(tmp_path):
    from ldp.methods.lora_diffusion import LoraDiffusionConfig

    path = tmp_path / "m.yaml"
    path.write_text("share: step\nranks: [16, 8, 4]\n")
    cfg = load(LoraDiffusionConfig, path, ["lambda_orth=0.5", "inject_layers=[1]"])
    assert (cfg.share, cfg.ranks, cfg.lambda_orth, cfg.inject_layers) == (
        "step",
        [16, 8, 4],
        0.5,
        [1],
    )
    with pytest.raises(UsageError, match="config"):
        get_method("adapters").attach(make_tiny(), {"bottleneck": 0})
    with pytest.raises(UsageError, match="expects a AdaptersConfig"):
        get_method("adapters").attach(make_tiny(), get_method("bitfit").build_config())


def test_base_fingerprint_is_deterministic_and_sensitive():
    a, b = make_native(0), make_native(0)
    assert base_fingerprint(a) == base_fingerprint(b)
    assert len(base_fingerprint(a)) == 64
    assert base_fingerprint(make_native(1)) != base_fingerprint(a)
    with torch.no_grad():
        b.layers[0].attn.q_proj.bias[0] += 1e-6
    assert base_fingerprint(b) != base_fingerprint(a)
    # a bf16 copy of the same weights is a different base
    assert base_fingerprint(make_native(0).to(torch.bfloat16)) != base_fingerprint(a)
    # attaching does not change what the base's fingerprint is recorded as
    model = get_method("weight-lora").attach(make_native(0), {"r": 2})
    assert model.base_hash == base_fingerprint(a)


def test_resolve_steps_from_t_and_steps():
    T = 100
    t = torch.arange(1, T + 1) / T  # k / T in float32 -> exactly k
    assert torch.equal(resolve_steps(t, None, T, T), torch.arange(1, T + 1))
    assert resolve_steps(torch.tensor([0.0, 0.0051, 1.0]), None, T, 3).tolist() == [1, 1, 100]
    assert resolve_steps(torch.tensor(0.5), None, T, 4).tolist() == [50] * 4
    assert resolve_steps(None, torch.tensor([7, 9]), T, 2).tolist() == [7, 9]
    assert resolve_steps(torch.tensor([0.9, 0.9]), torch.tensor([7, 9]), T, 2).tolist() == [7, 9]
    with pytest.raises(UsageError, match="3 entries"):
        resolve_steps(None, torch.tensor([1, 2, 3]), T, 2)


def test_corrupt_or_foreign_artifacts_are_refused(tmp_path):
    model = get_method("adapters").attach(make_tiny(), {"bottleneck": 4})
    folder = model.save_adapter(tmp_path / "a", base_name="t")
    weights = load_file(str(folder / ADAPTER_WEIGHTS_NAME))
    dropped = dict(weights)
    dropped.pop(min(dropped))
    save_file(dropped, str(folder / ADAPTER_WEIGHTS_NAME))
    with pytest.raises(IntegrityError, match="1 missing"):
        load_adapter(make_tiny(), folder)
    with pytest.raises(UsageError, match="not an adapter folder"):
        load_adapter(make_tiny(), tmp_path / "nothing")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(UsageError, match="not an LDP adapter"):
        load_adapter(make_tiny(), tmp_path / "b")


def test_share_step_roundtrip_and_regularisers_after_load(tmp_path):
    method = get_method("lora-diffusion")
    cfg = {"ranks": [4, 2, 2], "time_embed_dim": 8, "num_steps": 9, "share": "step"}
    model = method.attach(make_tiny(), cfg)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.normal_(0, 0.1)
    folder = model.save_adapter(tmp_path / "s", base_name="t")
    loaded = load_adapter(make_tiny(), folder)
    assert loaded.config.share == "step"
    assert loaded.phase_modules()["early"].lora_A.shape[0] == 3
    for key, value in model.regularization().items():
        assert torch.equal(loaded.regularization()[key], value)
    assert loaded.effective_rank() == model.effective_rank()


def test_default_trajectory_adapter_is_under_one_percent_of_1_3b():
    from ldp.models.native import DiffusionTransformer
    from ldp.models.sizes import count_parameters, size_config

    with torch.device("meta"):
        base = DiffusionTransformer(size_config("1.3b"))
    model = get_method("lora-diffusion").attach(base)
    counts = model.parameter_counts()
    assert counts["total"] == count_parameters("1.3b")["total"] + counts["trainable"]
    assert counts["percent"] < 1.0
    # d = 2048, d_t = 128; share: nested, so k = 2 modules of rank max(ranks) = 64 serve every
    # phase: W_B r x (d + d_t), W_A d x r, FiLM r x d_c + r with d_c = n_blocks x d (Enc(c) reads
    # every block); one offset b (d); one attention-pooling query (d) per block Enc(c) reads
    d_c = len(base.blocks()) * 2048
    r = 64
    expected = 2 * (r * (2048 + 128) + 2048 * r + r * d_c + r) + 2048 + d_c
    assert counts["trainable"] == expected
    assert all(p.device.type == "meta" for p in model.trainable_parameters())
