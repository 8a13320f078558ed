"""Parallel strategy: which DeepSpeed ZeRO stage and offload a job runs with, and its config.

``--strategy auto|ddp|zero2|zero3|zero3-offload``. ``auto`` is resolved by
:func:`choose_strategy` from :mod:`ldp.cluster.memory` estimates, which know that adapter methods
leave the base frozen: it picks the *least* sharding that fits, because every step up (ZeRO-2 ->
ZeRO-3 -> offload) adds communication or host traffic and buys only memory.

:func:`deepspeed_config` turns a concrete strategy into the DeepSpeed JSON config the Ray Train
worker passes to ``deepspeed.initialize(config=...)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ldp.cluster.memory import STRATEGIES, MemoryEstimate, format_bytes
from ldp.errors import LdpError, UsageError

__all__ = [
    "DEFAULT_HEADROOM",
    "STRATEGY_CHOICES",
    "ZERO_STAGE",
    "choose_strategy",
    "deepspeed_config",
    "parse_strategy",
]

STRATEGY_CHOICES: tuple[str, ...] = ("auto", *STRATEGIES)
"""What ``--strategy`` accepts."""

ZERO_STAGE: dict[str, int] = {"ddp": 0, "zero2": 2, "zero3": 3, "zero3-offload": 3}

DEFAULT_HEADROOM = 0.9
"""Fraction of GPU memory an estimate may fill; the rest is for the CUDA context, allocator
fragmentation, communication buckets and what the estimate does not model."""

_QUIET_STEPS = 1_000_000_000  # DeepSpeed's steps_per_print: our trainer does the logging


def parse_strategy(name: str) -> str:
    """Validate a ``--strategy`` value (case-insensitive); raises :class:`UsageError`."""
    value = (name or "").strip().lower()
    if value not in STRATEGY_CHOICES:
        raise UsageError(f"unknown strategy {name!r}; choose one of {'|'.join(STRATEGY_CHOICES)}")
    return value


def choose_strategy(
    estimates: Mapping[str, MemoryEstimate],
    gpus_per_node: int,
    gpu_mem_bytes: int,
    num_gpus: int,
    *,
    headroom: float = DEFAULT_HEADROOM,
    cpu_mem_per_node_bytes: int | None = None,
) -> tuple[str, str]:
    """Resolve ``--strategy auto``: ``(strategy, reason)``.

    ``estimates`` maps strategies to :class:`MemoryEstimate` computed for ``num_gpus`` ranks
    (:func:`ldp.cluster.memory.estimate_strategies`). The first of ``ddp``, ``zero2``, ``zero3``,
    ``zero3-offload`` whose per-GPU bytes fit ``headroom * gpu_mem_bytes`` wins (and, for the
    offload one, whose host memory fits ``cpu_mem_per_node_bytes`` when given). With no GPUs the
    job runs on CPU workers over gloo and ``ddp`` is chosen. Raises :class:`LdpError` when
    nothing fits, naming what would be needed.
    """
    if num_gpus < 0 or gpus_per_node < 0:
        raise UsageError("num_gpus and gpus_per_node must be >= 0")
    if num_gpus == 0:
        return (
            "ddp",
            "no GPUs: CPU workers over gloo, plain data parallel (ZeRO saves GPU memory only)",
        )
    if gpu_mem_bytes <= 0:
        raise UsageError(f"gpu_mem_bytes must be > 0, got {gpu_mem_bytes}")
    if not 0 < headroom <= 1:
        raise UsageError(f"headroom must be in (0, 1], got {headroom}")
    missing = [s for s in STRATEGIES if s not in estimates]
    if missing:
        raise ValueError(f"estimates lack {', '.join(missing)}")
    for s in STRATEGIES:
        if estimates[s].num_gpus != num_gpus:
            raise ValueError(
                f"estimate for {s} was made for {estimates[s].num_gpus} GPUs, not {num_gpus}"
            )

    usable = gpu_mem_bytes * headroom
    nodes = -(-num_gpus // max(1, gpus_per_node))
    over: list[str] = []
    for s in STRATEGIES:
        est = estimates[s]
        if est.per_gpu_bytes > usable:
            over.append(f"{s} {format_bytes(est.per_gpu_bytes)}/GPU")
            continue
        cpu_node = est.cpu_bytes_per_node(gpus_per_node)
        if cpu_mem_per_node_bytes is not None and cpu_node > cpu_mem_per_node_bytes:
            over.append(f"{s} {format_bytes(cpu_node)} host memory/node")
            continue
        return s, _reason(s, est, over, usable, gpu_mem_bytes, num_gpus, nodes, cpu_node)
    raise LdpError(
        f"does not fit on {num_gpus} GPU(s) of {format_bytes(gpu_mem_bytes)} "
        f"({format_bytes(usable)} usable): {'; '.join(over)}; "
        "add GPUs, use an adapter method instead of full fine-tuning, or a smaller size"
    )


def _reason(
    s: str,
    est: MemoryEstimate,
    over: list[str],
    usable: float,
    gpu_mem: int,
    num_gpus: int,
    nodes: int,
    cpu_node: int,
) -> str:
    frozen = est.total_params - est.trainable_params
    what = (
        f"full fine-tuning ({est.trainable_params / 1e9:.2f}B params train)"
        if frozen == 0
        else f"frozen base + {est.trainable_params / 1e6:.1f}M trainable params"
    )
    head = f"{s}: {what}, {format_bytes(est.per_gpu_bytes)} per GPU fits {format_bytes(usable)} usable of {format_bytes(gpu_mem)}"
    if over:
        head += f" (less sharding does not fit: {'; '.join(over)})"
    bd = est.breakdown
    detail = {
        "ddp": "no sharding needed, every GPU holds the whole model and its states",
        "zero2": f"grads and optimizer states sharded over {num_gpus} GPUs, params replicated",
        "zero3": f"params, grads and optimizer states sharded over {num_gpus} GPUs",
        "zero3-offload": (
            f"params and optimizer states offloaded to CPU ({format_bytes(cpu_node)} host memory per node)"
        ),
    }[s]
    parts = (
        f"params {format_bytes(bd['params'])}, grads {format_bytes(bd['grads'])}, "
        f"optimizer {format_bytes(bd['optimizer_states'])}"
    )
    where = f"{num_gpus} GPU(s) on {nodes} node(s)"
    return f"{head}; {detail} [{parts}; {where}]"


def deepspeed_config(
    strategy: str,
    *,
    micro_batch: int,
    grad_accum: int = 1,
    lr: float | None = None,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    grad_clip: float = 1.0,
    bf16: bool = False,
    zero3_param_persistence_threshold: int | None = None,
    offload_optimizer: bool | None = None,
    offload_param: bool | None = None,
    on_gpu: bool = False,
) -> dict[str, Any]:
    """A DeepSpeed config dict for a concrete strategy (resolve ``auto`` first).

    What is in it:

    - ``train_micro_batch_size_per_gpu`` / ``gradient_accumulation_steps`` (DeepSpeed derives
      ``train_batch_size`` from the world size), ``gradient_clipping`` (0 disables).
    - ``bf16.enabled``: off unless asked (CPU runs stay fp32); ``fp16`` is never used.
    - ``zero_optimization.stage``: 0 for ``ddp``, 2, or 3. ZeRO-3 adds
      ``stage3_gather_16bit_weights_on_model_save`` (so adapter weights can be saved whole) and
      ``stage3_param_persistence_threshold`` when given (0 partitions every tensor: the way to
      test the partitioned path on a tiny model). ``overlap_comm`` only on GPUs.
    - ``offload_optimizer`` / ``offload_param`` ``{"device": "cpu"}``: both for
      ``zero3-offload``; ``offload_optimizer=True`` is also allowed with ``zero2``/``zero3``.
    - ``optimizer``: only when ``lr`` is given (``AdamW``; on CPU ``torch_adam`` so no fused
      kernel is JIT-built). Without ``lr`` the caller passes its own optimizer and scheduler to
      ``deepspeed.initialize`` (the trainer's AdamW + warm-up/cosine); with offload that needs
      ``zero_force_ds_cpu_optimizer: false``, which is then set.
    - No ``scheduler`` (the trainer owns the schedule) and DeepSpeed's own step printing is off.
    """
    strategy = parse_strategy(strategy)
    if strategy == "auto":
        raise UsageError("resolve --strategy auto with choose_strategy() before building a config")
    if micro_batch < 1 or grad_accum < 1:
        raise UsageError(
            f"micro_batch and grad_accum must be >= 1, got {micro_batch}, {grad_accum}"
        )
    if grad_clip < 0:
        raise UsageError(f"grad_clip must be >= 0, got {grad_clip}")
    stage = ZERO_STAGE[strategy]
    if offload_optimizer is None:
        offload_optimizer = strategy == "zero3-offload"
    if offload_param is None:
        offload_param = strategy == "zero3-offload"
    if offload_optimizer and stage == 0:
        raise UsageError("optimizer offload needs ZeRO (zero2, zero3 or zero3-offload), not ddp")
    if offload_param and stage != 3:
        raise UsageError(f"parameter offload needs ZeRO-3 (zero3 or zero3-offload), not {strategy}")
    if strategy == "zero3-offload" and not (offload_optimizer and offload_param):
        raise UsageError(
            "zero3-offload offloads both optimizer and parameters; use zero3 otherwise"
        )
    if zero3_param_persistence_threshold is not None:
        if stage != 3:
            raise UsageError("zero3_param_persistence_threshold applies to ZeRO-3 only")
        if zero3_param_persistence_threshold < 0:
            raise UsageError("zero3_param_persistence_threshold must be >= 0")

    zero: dict[str, Any] = {"stage": stage}
    if stage >= 2:
        zero.update(
            contiguous_gradients=True,
            overlap_comm=bool(on_gpu),
            reduce_bucket_size=int(5e8),
        )
    if stage == 2:
        zero.update(allgather_partitions=True, reduce_scatter=True, allgather_bucket_size=int(5e8))
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
        if zero3_param_persistence_threshold is not None:
            zero["stage3_param_persistence_threshold"] = int(zero3_param_persistence_threshold)
    if offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": bool(on_gpu)}
    if offload_param:
        zero["offload_param"] = {"device": "cpu", "pin_memory": bool(on_gpu)}

    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": int(micro_batch),
        "gradient_accumulation_steps": int(grad_accum),
        "gradient_clipping": float(grad_clip),
        "bf16": {"enabled": bool(bf16)},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "steps_per_print": _QUIET_STEPS,
        "wall_clock_breakdown": False,
    }
    if lr is not None:
        if lr <= 0:
            raise UsageError(f"lr must be > 0, got {lr}")
        params: dict[str, Any] = {
            "lr": float(lr),
            "betas": [float(betas[0]), float(betas[1])],
            "eps": float(eps),
            "weight_decay": float(weight_decay),
        }
        if not on_gpu and not offload_optimizer:
            params["torch_adam"] = True
        config["optimizer"] = {"type": "AdamW", "params": params}
    elif offload_optimizer:
        config["zero_force_ds_cpu_optimizer"] = False
    return config
