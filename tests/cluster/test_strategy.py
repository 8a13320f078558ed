"""Strategy choice from memory estimates, and the DeepSpeed configs per strategy."""

from __future__ import annotations

import pytest
from ldp.cluster.memory import estimate_strategies
from ldp.cluster.strategy import (
    STRATEGY_CHOICES,
    choose_strategy,
    deepspeed_config,
    parse_strategy,
)
from ldp.errors import LdpError, UsageError

P7B = 6_740_000_000
LARGEST_7B = 32_000 * 4096
ADAPTER = 20_000_000
GB = 10**9


def _choose(trainable, gpus, gpu_gb, **kw):
    ests = estimate_strategies(
        P7B,
        trainable,
        gpus,
        largest_layer_params=LARGEST_7B,
        activation_bytes=kw.pop("activation_bytes", 0),
    )
    return choose_strategy(ests, min(gpus, 8), gpu_gb * GB, gpus, **kw)


def test_7b_adapter_on_8x80gb_is_plain_data_parallel():
    strategy, reason = _choose(ADAPTER, 8, 80)
    assert strategy == "ddp"
    assert reason.startswith("ddp:")
    assert "frozen base + 20.0M trainable params" in reason
    assert "13.8 GB per GPU" in reason  # 13.48 GB bf16 base + 0.36 GB adapter states
    assert "params 13.5 GB, grads 120.0 MB, optimizer 240.0 MB" in reason


def test_7b_adapter_fits_8x24gb_unsharded_too():
    strategy, _ = _choose(ADAPTER, 8, 24)
    assert strategy == "ddp"


def test_7b_full_finetuning_on_8x24gb_needs_zero3():
    strategy, reason = _choose(P7B, 8, 24, activation_bytes=2 * GB)
    assert strategy in ("zero3", "zero3-offload")
    assert strategy == "zero3"
    assert "full fine-tuning (6.74B params train)" in reason
    # It says why the cheaper strategies were not taken.
    assert "less sharding does not fit: ddp 136.8 GB/GPU; zero2 30.6 GB/GPU" in reason
    assert "sharded over 8 GPUs" in reason


def test_7b_full_finetuning_on_8x80gb_is_zero2():
    strategy, reason = _choose(P7B, 8, 80)
    assert strategy == "zero2"
    assert "ddp 134.8 GB/GPU" in reason


def test_offload_when_sharding_is_not_enough_and_host_memory_is_checked():
    # Full 7B on a single 24 GB GPU: only zero3-offload fits on the GPU ...
    strategy, reason = _choose(P7B, 1, 24)
    assert strategy == "zero3-offload"
    assert "offloaded to CPU (121.3 GB host memory per node)" in reason
    # ... provided the host has the memory for the offloaded states.
    with pytest.raises(
        LdpError, match=r"does not fit on 1 GPU\(s\).*zero3-offload 121.3 GB host memory/node"
    ):
        _choose(P7B, 1, 24, cpu_mem_per_node_bytes=64 * GB)


def test_no_gpus_runs_ddp_on_cpu():
    ests = estimate_strategies(10**6, 10**6, 1)
    strategy, reason = choose_strategy(ests, 0, 0, 0)
    assert strategy == "ddp" and "gloo" in reason


def test_estimates_must_match_the_gpu_count():
    with pytest.raises(ValueError, match="made for 4 GPUs, not 8"):
        choose_strategy(estimate_strategies(P7B, ADAPTER, 4), 8, 80 * GB, 8)


def test_parse_strategy():
    assert parse_strategy("ZeRO3-Offload") == "zero3-offload"
    assert STRATEGY_CHOICES == ("auto", "ddp", "zero2", "zero3", "zero3-offload")
    with pytest.raises(UsageError, match="auto|ddp|zero2|zero3|zero3-offload"):
        parse_strategy("fsdp")


# --- DeepSpeed configs -------------------------------------------------------------------


def test_deepspeed_config_per_strategy():
    ddp = deepspeed_config("ddp", micro_batch=4, grad_accum=2)
    z2 = deepspeed_config("zero2", micro_batch=4)
    z3 = deepspeed_config("zero3", micro_batch=4, zero3_param_persistence_threshold=0)
    z3o = deepspeed_config("zero3-offload", micro_batch=4)
    assert [c["zero_optimization"]["stage"] for c in (ddp, z2, z3, z3o)] == [0, 2, 3, 3]
    assert ddp["train_micro_batch_size_per_gpu"] == 4 and ddp["gradient_accumulation_steps"] == 2
    assert "train_batch_size" not in ddp  # DeepSpeed derives it from the world size
    assert z3["zero_optimization"]["stage3_param_persistence_threshold"] == 0
    assert z3["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert "stage3_param_persistence_threshold" not in z3o["zero_optimization"]  # DS default
    assert z3o["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert z3o["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert "offload_optimizer" not in z3["zero_optimization"]
    assert "offload_param" not in z2["zero_optimization"]
    # CPU-friendly defaults: no bf16 unless asked, no comm overlap, no pinned memory.
    for c in (ddp, z2, z3, z3o):
        assert c["bf16"] == {"enabled": False} and c["fp16"] == {"enabled": False}
    assert z2["zero_optimization"]["overlap_comm"] is False
    assert z3o["zero_optimization"]["offload_param"]["pin_memory"] is False
    on_gpu = deepspeed_config("zero3-offload", micro_batch=1, bf16=True, on_gpu=True)
    assert on_gpu["bf16"] == {"enabled": True}
    assert on_gpu["zero_optimization"]["overlap_comm"] is True
    assert on_gpu["zero_optimization"]["offload_param"]["pin_memory"] is True


def test_optimizer_is_in_the_config_only_when_lr_is_given():
    client = deepspeed_config("zero2", micro_batch=1)
    assert "optimizer" not in client and "scheduler" not in client
    own = deepspeed_config("zero2", micro_batch=1, lr=3e-4, weight_decay=0.01)
    assert own["optimizer"]["type"] == "AdamW"
    assert own["optimizer"]["params"]["lr"] == 3e-4
    assert own["optimizer"]["params"]["torch_adam"] is True  # no fused kernel build on CPU
    assert (
        "torch_adam"
        not in deepspeed_config("zero2", micro_batch=1, lr=1e-3, on_gpu=True)["optimizer"]["params"]
    )
    # A client optimizer with offload needs DeepSpeed's CPU-optimizer check switched off.
    assert deepspeed_config("zero3-offload", micro_batch=1)["zero_force_ds_cpu_optimizer"] is False
    assert "zero_force_ds_cpu_optimizer" not in client


def test_zero2_with_optimizer_offload():
    c = deepspeed_config("zero2", micro_batch=1, offload_optimizer=True)
    assert c["zero_optimization"]["offload_optimizer"] == {"device": "cpu", "pin_memory": False}


@pytest.mark.parametrize(
    "strategy, kwargs, match",
    [
        ("auto", {}, "resolve --strategy auto"),
        ("ddp", {"offload_optimizer": True}, "needs ZeRO"),
        ("zero2", {"offload_param": True}, "needs ZeRO-3"),
        ("zero2", {"zero3_param_persistence_threshold": 0}, "ZeRO-3 only"),
        ("zero3-offload", {"offload_param": False}, "zero3-offload offloads both"),
        ("zero3", {"micro_batch": 0}, "micro_batch"),
        ("zero9", {}, "unknown strategy"),
    ],
)
def test_deepspeed_config_refuses_bad_combinations(strategy, kwargs, match):
    args = {"micro_batch": 1, **kwargs}
    with pytest.raises(UsageError, match=match):
        deepspeed_config(strategy, **args)


@pytest.mark.parametrize("strategy", ["ddp", "zero2", "zero3", "zero3-offload"])
@pytest.mark.parametrize("lr", [None, 1e-3])
def test_deepspeed_accepts_every_config(strategy, lr):
    """DeepSpeed's own (strict: unknown keys are errors) config parser takes them as meant."""
    from deepspeed.runtime.config import DeepSpeedConfig

    thr = 0 if strategy.startswith("zero3") else None
    cfg = DeepSpeedConfig(
        deepspeed_config(
            strategy, micro_batch=3, grad_accum=2, lr=lr, zero3_param_persistence_threshold=thr
        )
    )
    assert cfg.zero_optimization_stage == {"ddp": 0, "zero2": 2}.get(strategy, 3)
    assert cfg.train_batch_size == 6  # 3 x 2 x world size 1
    assert (cfg.zero_config.offload_param is not None) == (strategy == "zero3-offload")
    assert (cfg.zero_config.offload_optimizer is not None) == (strategy == "zero3-offload")
    if thr is not None:
        assert cfg.zero_config.param_persistence_threshold == 0
    assert (cfg.optimizer_name is not None) == (lr is not None)
