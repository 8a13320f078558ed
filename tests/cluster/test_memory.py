"""Memory estimates: frozen vs trainable accounting, ZeRO sharding, DeepSpeed's estimators."""

from __future__ import annotations

import json
import re

import pytest
from ldp.cluster.memory import (
    STRATEGIES,
    estimate_memory,
    estimate_strategies,
    format_bytes,
    memory_table,
)
from ldp.errors import UsageError

P7B = 6_740_000_000  # a LLaMA-7B-shaped base
LARGEST_7B = 32_000 * 4096  # its embedding, the largest single layer
ADAPTER = 20_000_000


def test_frozen_base_costs_only_its_weights():
    est = estimate_memory(P7B, ADAPTER, "ddp", 8)
    bd = est.breakdown
    assert bd["params"] == 2 * P7B  # bf16 weights, trainable ones included, replicated
    assert bd["grads"] == 6 * ADAPTER  # 16-bit + fp32 grads of the adapter only
    assert bd["optimizer_states"] == 12 * ADAPTER  # fp32 master + Adam m, v
    assert est.per_gpu_bytes == sum(bd.values())
    # ~13.5 GB of bf16 base, the adapter's states are a rounding error on top.
    assert 13.4e9 < bd["params"] < 13.6e9
    assert bd["grads"] + bd["optimizer_states"] < 0.05 * bd["params"]


def test_full_finetuning_costs_20_bytes_per_param_mixed_16_fp32():
    assert estimate_memory(1000, 1000, "ddp", 1).per_gpu_bytes == 20 * 1000
    fp32 = estimate_memory(1000, 1000, "ddp", 1, base_dtype_bytes=4)
    assert fp32.per_gpu_bytes == 16 * 1000
    assert fp32.breakdown == {
        "params": 4000,
        "grads": 4000,
        "optimizer_states": 8000,
        "activations": 0,
    }
    # An adapter on a frozen fp32 base: 4 bytes per frozen param, 16 per trainable one.
    assert (
        estimate_memory(1000, 100, "ddp", 1, base_dtype_bytes=4).per_gpu_bytes == 900 * 4 + 100 * 16
    )


def test_zero_stages_shard_what_they_should():
    n = 8
    ddp, z2, z3, z3o = (estimate_memory(P7B, P7B, s, n) for s in STRATEGIES)
    # ZeRO-2: params replicated, grads and optimizer states / N.
    assert z2.breakdown["params"] == ddp.breakdown["params"]
    assert z2.breakdown["grads"] == ddp.breakdown["grads"] // n
    assert z2.breakdown["optimizer_states"] == ddp.breakdown["optimizer_states"] // n
    # ZeRO-3: params / N too.
    assert z3.breakdown["params"] == ddp.breakdown["params"] // n
    assert z3.breakdown["grads"] == z2.breakdown["grads"]
    # ZeRO-3 offload: nothing but the (here zero) gather buffer on the GPU, all states on CPU.
    assert z3o.per_gpu_bytes == 0
    assert z3o.cpu_bytes == 18 * P7B // n  # 2 (bf16 params) + 4 + 4 + 8 (fp32 grads, master, m, v)
    assert ddp.per_gpu_bytes > z2.per_gpu_bytes > z3.per_gpu_bytes > z3o.per_gpu_bytes


def test_zero3_shards_the_frozen_base_but_zero2_does_not():
    z2 = estimate_memory(P7B, ADAPTER, "zero2", 8)
    z3 = estimate_memory(P7B, ADAPTER, "zero3", 8)
    assert z2.breakdown["params"] == 2 * P7B
    assert z3.breakdown["params"] == 2 * P7B // 8
    # The gather buffer for the layer being computed: current + prefetch, in bf16.
    z3l = estimate_memory(P7B, ADAPTER, "zero3", 8, largest_layer_params=LARGEST_7B)
    assert z3l.breakdown["params"] - z3.breakdown["params"] == 4 * LARGEST_7B


def test_offload_moves_optimizer_states_to_cpu():
    on = estimate_memory(P7B, P7B, "zero2", 8, offload=True)
    off = estimate_memory(P7B, P7B, "zero2", 8)
    assert on.offload and not off.offload
    assert on.breakdown["optimizer_states"] == on.breakdown["grads"] == 0
    assert on.breakdown["params"] == off.breakdown["params"]
    assert on.cpu_bytes == 16 * P7B // 8
    assert on.cpu_bytes_per_node(8) == 16 * P7B


def test_activations_add_per_gpu():
    base = estimate_memory(10**6, 10**6, "zero3", 4)
    act = estimate_memory(10**6, 10**6, "zero3", 4, activation_bytes=123)
    assert act.per_gpu_bytes - base.per_gpu_bytes == 123
    assert act.breakdown["activations"] == 123


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"strategy": "zero4"}, "unknown strategy"),
        ({"strategy": "ddp", "offload": True}, "offload needs ZeRO"),
        ({"trainable_params": 2 * 10**6}, "trainable_params"),
        ({"num_gpus": 0}, "num_gpus"),
        ({"optimizer": "lion"}, "unknown optimizer"),
    ],
)
def test_bad_inputs_are_usage_errors(kwargs, match):
    args = {"total_params": 10**6, "trainable_params": 10**3, "strategy": "zero2", "num_gpus": 2}
    args.update(kwargs)
    with pytest.raises(UsageError, match=match):
        estimate_memory(**args)


# --- DeepSpeed's own estimators: they count every parameter as trainable, so they agree with
# --- ours for full fine-tuning only.

_NODES = [(1, 1), (4, 1), (8, 1), (8, 2)]  # (gpus per node, nodes)


@pytest.mark.parametrize("gpus_per_node, nodes", _NODES)
def test_zero2_agrees_with_deepspeed_for_full_finetuning(gpus_per_node, nodes):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    n = gpus_per_node * nodes
    for offload in (False, True):
        _, ds_gpu = estimate_zero2_model_states_mem_needs(
            P7B, gpus_per_node, nodes, cpu_offload=offload
        )
        ours = estimate_memory(P7B, P7B, "zero2", n, offload=offload)
        assert ours.per_gpu_bytes == pytest.approx(ds_gpu, rel=1e-6)


@pytest.mark.parametrize("gpus_per_node, nodes", _NODES)
def test_zero3_agrees_with_deepspeed_for_full_finetuning(gpus_per_node, nodes):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    n = gpus_per_node * nodes
    kw = {"largest_layer_params": LARGEST_7B}
    # Optimizer offload (params stay on GPU, sharded) and full offload: exact agreement,
    # GPU and host (DeepSpeed multiplies host memory by a 1.5 buffer factor).
    for strategy, offload, offload_params in (
        ("zero3", True, False),
        ("zero3-offload", True, True),
    ):
        ds_cpu, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
            P7B,
            LARGEST_7B,
            gpus_per_node,
            nodes,
            cpu_offload=offload,
            cpu_offload_params=offload_params,
            zero_init=True,
        )
        ours = estimate_memory(P7B, P7B, strategy, n, offload=offload, **kw)
        assert ours.per_gpu_bytes == pytest.approx(ds_gpu, rel=1e-6)
        assert 1.5 * ours.cpu_bytes_per_node(gpus_per_node) == pytest.approx(ds_cpu, rel=1e-6)
    # No offload: DeepSpeed's formula (4*largest + 18*P/N) leaves out the GPU's own 16-bit
    # parameter partition (2*P/N), which its offload branch above does count. We count it.
    _, ds_gpu, _ = estimate_zero3_model_states_mem_needs(
        P7B, LARGEST_7B, gpus_per_node, nodes, cpu_offload=False, cpu_offload_params=False
    )
    ours = estimate_memory(P7B, P7B, "zero3", n, **kw)
    assert ours.per_gpu_bytes - ds_gpu == pytest.approx(2 * P7B / n, abs=2)
    assert ours.per_gpu_bytes / ds_gpu == pytest.approx(20 / 18, rel=0.05)


def _parse_all_cold(text: str) -> list[tuple[float, float, str]]:
    rows = re.findall(r"([\d.]+)GB \|\s+([\d.]+)GB \| (.+)", text)
    # Options read "offload_param=OffloadDeviceEnum.cpu , ..." on some Python versions.
    norm = lambda o: re.sub(r"\s+", "", o.replace("OffloadDeviceEnum.", ""))
    return [(float(c), float(g), norm(opts)) for c, g, opts in rows]


def test_deepspeed_all_cold_tables_match_ours(capsys):
    """The printed tables of the ``*_all_cold`` estimators, row by row (GiB, 2 decimals)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    gib = 2**30
    estimate_zero2_model_states_mem_needs_all_cold(P7B, num_gpus_per_node=8)
    rows = _parse_all_cold(capsys.readouterr().out)
    z2 = {o: g for _, g, o in rows}
    assert len(z2) == 2
    assert z2["offload_optimizer=cpu"] == pytest.approx(
        estimate_memory(P7B, P7B, "zero2", 8, offload=True).per_gpu_bytes / gib, abs=0.01
    )
    assert z2["offload_optimizer=none"] == pytest.approx(
        estimate_memory(P7B, P7B, "zero2", 8).per_gpu_bytes / gib, abs=0.01
    )

    estimate_zero3_model_states_mem_needs_all_cold(P7B, LARGEST_7B, num_gpus_per_node=8)
    rows = _parse_all_cold(capsys.readouterr().out)
    z3 = {o: g for _, g, o in rows if "zero_init=1" in o}
    assert len(z3) == 3
    full_off = estimate_memory(P7B, P7B, "zero3-offload", 8, largest_layer_params=LARGEST_7B)
    opt_off = estimate_memory(P7B, P7B, "zero3", 8, offload=True, largest_layer_params=LARGEST_7B)
    assert z3["offload_param=cpu,offload_optimizer=cpu,zero_init=1"] == pytest.approx(
        full_off.per_gpu_bytes / gib, abs=0.01
    )
    assert z3["offload_param=none,offload_optimizer=cpu,zero_init=1"] == pytest.approx(
        opt_off.per_gpu_bytes / gib, abs=0.01
    )


def test_deepspeed_overestimates_adapter_jobs_ours_does_not():
    """DeepSpeed assumes everything trains: for a frozen 7B base + adapter it is far off."""
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    _, ds_gpu = estimate_zero2_model_states_mem_needs(P7B, 8, 1, cpu_offload=False)
    ours = estimate_memory(P7B, ADAPTER, "zero2", 8)
    assert ds_gpu > 2 * ours.per_gpu_bytes


def test_memory_table_rows_for_ldp_sizes():
    methods = {"lora-diffusion": ADAPTER, "weight-lora": 67_000_000, "full": P7B}
    rows = memory_table(P7B, methods, gpus=8, gpu_mem=80 * 10**9, largest_layer_params=LARGEST_7B)
    by = {r.method: r for r in rows}
    assert [r.method for r in rows] == list(methods)
    assert set(by["full"].estimates) == set(STRATEGIES)
    assert by["lora-diffusion"].auto == "ddp" and by["weight-lora"].auto == "ddp"
    assert by["full"].auto == "zero2"
    assert by["full"].fits == {"ddp": False, "zero2": True, "zero3": True, "zero3-offload": True}
    assert by["full"].estimates["zero3"] == estimate_memory(
        P7B, P7B, "zero3", 8, largest_layer_params=LARGEST_7B
    )
    json.dumps([r.as_dict() for r in rows])  # serialisable for `ldp sizes --json`


def test_memory_table_says_when_nothing_fits():
    # Full 7B on one 8 GB GPU: even zero3-offload's GPU share (activations here) is too big.
    rows = memory_table(P7B, {"full": P7B}, gpus=1, gpu_mem=8 * 10**9, activation_bytes=10**10)
    assert rows[0].auto is None
    assert "does not fit" in rows[0].reason
    assert not any(rows[0].fits.values())


def test_estimate_strategies_and_format_bytes():
    ests = estimate_strategies(10**9, 10**9, 4, offload=True)
    assert list(ests) == list(STRATEGIES)
    assert not ests["zero3"].offload and ests["zero3-offload"].offload
    assert format_bytes(13.48e9) == "13.5 GB"
    assert format_bytes(512) == "512 B"
