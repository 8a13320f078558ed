"""Per-GPU memory of a training job under each parallel strategy, counted without allocating.

The model is DeepSpeed's own accounting of "model states" (parameters, gradients, optimizer
states), extended with the one fact DeepSpeed's estimators leave out: **a frozen parameter costs
only its weight bytes**. Adapter methods (``lora-diffusion``, ``weight-lora``, ``prefix``,
``adapters``, ``bitfit``) freeze the base, so a 7B base in bf16 costs ~13.5 GB per GPU (sharded
only by ZeRO-3) while the adapter's own states are a rounding error; ``full`` trains everything.

Bytes per parameter (``b`` = ``base_dtype_bytes``; ``b < 4`` means mixed precision with an fp32
master copy, ``b == 4`` means plain fp32 training):

=====================  ===========================  =====================================
                        frozen parameter             trainable parameter (AdamW)
=====================  ===========================  =====================================
params                  ``b``                        ``b``
grads                   0                            ``b`` (16-bit) + 4 (fp32), or 4 in fp32
optimizer_states        0                            4 (fp32 master) + 8 (Adam m, v), or 8
=====================  ===========================  =====================================

So a trainable parameter costs 20 bytes in bf16 mixed precision (DeepSpeed's "2 + 18") and 16 in
fp32. What each strategy shards over the ``N`` GPUs (data-parallel ranks):

- ``ddp`` (ZeRO stage 0): nothing; every GPU holds everything.
- ``zero2``: gradients and optimizer states of the trainable parameters (``/ N``).
- ``zero3``: also the parameters, frozen ones included (``/ N``), plus a gather buffer for the
  layer being computed (``2 * b * largest_layer_params``: current layer + prefetch).
- ``offload=True`` (ZeRO-Offload, zero2/zero3): fp32 gradients, master weights and Adam states
  live in CPU memory, the optimizer step runs there; only 16-bit parameters stay on the GPU.
- ``zero3-offload``: optimizer *and* parameters on CPU; the GPU holds the gather buffer only.

Cross-check: for full fine-tuning this reproduces DeepSpeed's
``estimate_zero2_model_states_mem_needs`` exactly and ``estimate_zero3_model_states_mem_needs``
exactly for both offload variants. For ZeRO-3 without offload DeepSpeed's formula
(``4 * largest_layer + 18 * P / N``) omits the GPU's own 16-bit parameter partition (``2 * P / N``,
which its offload branch does count); this module counts it, so it is higher by exactly that.
Activations are not modelled: pass ``activation_bytes`` (per GPU) when you know them; with a
final-state adapter the base runs without autograd, so they are small.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ldp.errors import LdpError, UsageError
from ldp.units import format_bytes  # re-exported: the cluster layer's callers use it from here

__all__ = [
    "OPTIMIZER_STATE_BYTES",
    "STRATEGIES",
    "MemoryEstimate",
    "MemoryRow",
    "estimate_memory",
    "estimate_strategies",
    "format_bytes",
    "memory_table",
]

STRATEGIES: tuple[str, ...] = ("ddp", "zero2", "zero3", "zero3-offload")
"""Concrete strategies, from least to most sharding (``auto`` picks among these)."""

OPTIMIZER_STATE_BYTES: dict[str, int] = {"adamw": 8, "adam": 8, "sgd": 4}
"""fp32 optimizer-state bytes per trainable parameter (Adam: m and v; SGD: momentum)."""

_FP32 = 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Memory of one data-parallel rank (one GPU) for one strategy."""

    strategy: str
    """``ddp``, ``zero2``, ``zero3`` or ``zero3-offload``."""
    num_gpus: int
    """Data-parallel ranks the states are sharded over."""
    offload: bool
    """Optimizer states (and, for ``zero3-offload``, parameters) are in CPU memory."""
    per_gpu_bytes: int
    """Sum of ``breakdown``: what one GPU must hold."""
    breakdown: dict[str, int] = field(default_factory=dict)
    """GPU bytes by kind: ``params``, ``grads``, ``optimizer_states``, ``activations``."""
    cpu_bytes: int = 0
    """CPU bytes per rank for offloaded states (multiply by GPUs per node for a node)."""
    total_params: int = 0
    trainable_params: int = 0

    def cpu_bytes_per_node(self, gpus_per_node: int) -> int:
        """Host memory one node needs for the offloaded states of its ranks."""
        return self.cpu_bytes * max(1, min(gpus_per_node, self.num_gpus))

    def as_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "num_gpus": self.num_gpus,
            "offload": self.offload,
            "per_gpu_bytes": self.per_gpu_bytes,
            "breakdown": dict(self.breakdown),
            "cpu_bytes": self.cpu_bytes,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
        }


def estimate_memory(
    total_params: int,
    trainable_params: int,
    strategy: str,
    num_gpus: int,
    *,
    base_dtype_bytes: int = 2,
    optimizer: str = "adamw",
    activation_bytes: int = 0,
    offload: bool = False,
    largest_layer_params: int = 0,
) -> MemoryEstimate:
    """Per-GPU bytes of a job with ``trainable_params`` of ``total_params`` trained.

    ``strategy`` is one of :data:`STRATEGIES`; ``offload=True`` adds optimizer offload to
    ``zero2``/``zero3`` (``zero3-offload`` implies it). ``largest_layer_params`` sizes ZeRO-3's
    gather buffer (the embedding or one transformer block); 0 leaves it out.
    """
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if optimizer not in OPTIMIZER_STATE_BYTES:
        raise UsageError(
            f"unknown optimizer {optimizer!r}; known: {', '.join(sorted(OPTIMIZER_STATE_BYTES))}"
        )
    if num_gpus < 1:
        raise UsageError(f"num_gpus must be >= 1, got {num_gpus}")
    if not 0 <= trainable_params <= total_params:
        raise UsageError(
            f"trainable_params must be in [0, total_params], got {trainable_params} of {total_params}"
        )
    if base_dtype_bytes not in (1, 2, 4):
        raise UsageError(f"base_dtype_bytes must be 1, 2 or 4, got {base_dtype_bytes}")
    if strategy == "ddp" and offload:
        raise UsageError("offload needs ZeRO (zero2, zero3 or zero3-offload), not ddp")
    if min(activation_bytes, largest_layer_params) < 0:
        raise UsageError("activation_bytes and largest_layer_params must be >= 0")

    offload = offload or strategy == "zero3-offload"
    offload_params = strategy == "zero3-offload"
    shard_states = strategy != "ddp"  # zero2 and up shard grads + optimizer states
    shard_params = strategy in ("zero3", "zero3-offload")
    n = num_gpus
    b = base_dtype_bytes
    mixed = b < _FP32
    frozen = total_params - trainable_params

    # Per trainable parameter: gradients (16-bit + fp32 copy in mixed precision) and optimizer
    # states (fp32 master in mixed precision + the optimizer's own).
    grad_b = (b + _FP32) if mixed else _FP32
    optim_b = (_FP32 if mixed else 0) + OPTIMIZER_STATE_BYTES[optimizer]

    param_bytes = (frozen + trainable_params) * b
    grad_bytes = trainable_params * grad_b
    optim_bytes = trainable_params * optim_b

    def shard(x: float, yes: bool) -> float:
        return x / n if yes else x

    gpu_params = 0.0 if offload_params else shard(param_bytes, shard_params)
    if shard_params:
        gpu_params += 2 * b * largest_layer_params  # gathered layer + prefetch
    cpu = 0.0
    if offload:
        # fp32 grads, master and Adam states move to CPU (sharded per rank); the 16-bit
        # gradient partition is streamed out in buckets.
        gpu_grads = 0.0
        gpu_optim = 0.0
        cpu += (trainable_params * (_FP32 + optim_b)) / n
    else:
        gpu_grads = shard(grad_bytes, shard_states)
        gpu_optim = shard(optim_bytes, shard_states)
    if offload_params:
        cpu += param_bytes / n

    breakdown = {
        "params": int(gpu_params),
        "grads": int(gpu_grads),
        "optimizer_states": int(gpu_optim),
        "activations": int(activation_bytes),
    }
    return MemoryEstimate(
        strategy=strategy,
        num_gpus=n,
        offload=offload,
        per_gpu_bytes=sum(breakdown.values()),
        breakdown=breakdown,
        cpu_bytes=int(cpu),
        total_params=int(total_params),
        trainable_params=int(trainable_params),
    )


def estimate_strategies(
    total_params: int, trainable_params: int, num_gpus: int, **kwargs: Any
) -> dict[str, MemoryEstimate]:
    """:func:`estimate_memory` for every strategy in :data:`STRATEGIES` (offload off for the
    non-offload ones); keyword arguments are passed through."""
    kwargs.pop("offload", None)
    return {
        s: estimate_memory(total_params, trainable_params, s, num_gpus, **kwargs)
        for s in STRATEGIES
    }


@dataclass(frozen=True)
class MemoryRow:
    """One method's line of the ``ldp sizes`` memory table."""

    method: str
    trainable_params: int
    estimates: dict[str, MemoryEstimate]
    """Per strategy (:data:`STRATEGIES`)."""
    fits: dict[str, bool]
    """Whether each strategy fits the GPU memory (with the chooser's headroom)."""
    auto: str | None
    """What ``--strategy auto`` picks, or None when nothing fits."""
    reason: str
    """Why (the chooser's reason, or why nothing fits)."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "trainable_params": self.trainable_params,
            "per_gpu_bytes": {s: e.per_gpu_bytes for s, e in self.estimates.items()},
            "cpu_bytes": {s: e.cpu_bytes for s, e in self.estimates.items()},
            "fits": dict(self.fits),
            "auto": self.auto,
            "reason": self.reason,
        }


def memory_table(
    total_params: int,
    trainable_params_by_method: Mapping[str, int],
    gpus: int,
    gpu_mem: int,
    *,
    gpus_per_node: int | None = None,
    base_dtype_bytes: int = 2,
    optimizer: str = "adamw",
    activation_bytes: int = 0,
    largest_layer_params: int = 0,
    headroom: float | None = None,
) -> list[MemoryRow]:
    """One :class:`MemoryRow` per method: per-GPU bytes under each strategy on ``gpus`` GPUs of
    ``gpu_mem`` bytes each, and what ``auto`` would choose (for ``ldp sizes --gpus --gpu-mem``).

    ``gpus_per_node`` defaults to ``min(gpus, 8)``.
    """
    from ldp.cluster.strategy import DEFAULT_HEADROOM, choose_strategy

    headroom = DEFAULT_HEADROOM if headroom is None else headroom
    gpus_per_node = gpus_per_node or min(gpus, 8)
    rows = []
    for method, trainable in trainable_params_by_method.items():
        estimates = estimate_strategies(
            total_params,
            trainable,
            gpus,
            base_dtype_bytes=base_dtype_bytes,
            optimizer=optimizer,
            activation_bytes=activation_bytes,
            largest_layer_params=largest_layer_params,
        )
        usable = gpu_mem * headroom
        fits = {s: e.per_gpu_bytes <= usable for s, e in estimates.items()}
        try:
            auto, reason = choose_strategy(
                estimates, gpus_per_node, gpu_mem, gpus, headroom=headroom
            )
        except LdpError as exc:
            auto, reason = None, str(exc)
        rows.append(
            MemoryRow(
                method=method,
                trainable_params=int(trainable),
                estimates=estimates,
                fits=fits,
                auto=auto,
                reason=reason,
            )
        )
    return rows
