"""The resolved plan of an adapter job, without starting anything (``ldp submit --dry-run``).

:func:`plan_job` answers, for a validated :class:`~ldp.jobs.spec.JobSpec` on ``gpus`` GPUs of
``gpu_mem_gb`` each: which parallel strategy and why, memory per GPU (frozen base weights,
adapter states, activations at the job's micro-batch and sequence length), the DeepSpeed config
the workers would get, the Ray placement, and where the base comes from. Everything is counted on
PyTorch's ``meta`` device from the size's shape: nothing is allocated, nothing connects to Ray.
The registry is asked only whether the base exists.
"""

from __future__ import annotations

import math
from typing import Any

from ldp.errors import LdpError, first_line

__all__ = ["grad_through_base", "plan_job", "render_plan", "trainable_on_meta"]


def trainable_on_meta(size: str, method: str = "lora-diffusion", method_config: dict | None = None) -> int:
    """Trainable parameters of ``method`` (with ``method_config``) on the native ``size`` base,
    counted on the meta device."""
    import torch

    from ldp.methods import attach
    from ldp.models.native import DiffusionTransformer
    from ldp.models.sizes import size_config

    with torch.device("meta"):
        base = DiffusionTransformer(size_config(size))
        model = attach(base, method, dict(method_config or {}), base_hash="meta")
    return sum(p.numel() for p in model.trainable_parameters())


def grad_through_base(method: str, method_config: dict[str, Any]) -> bool:
    """Whether backpropagation runs through the frozen base's blocks (it does for every method
    except ``lora-diffusion`` injecting at the final hidden state only)."""
    return method != "lora-diffusion" or bool(method_config.get("inject_layers"))


def _base_source(spec: Any) -> dict[str, Any]:
    from ldp.bases import is_registry_ref

    ref = spec.base_ref
    if not is_registry_ref(ref):
        from pathlib import Path

        found = Path(ref).is_dir()
        return {"ref": ref, "kind": "folder", "found": found,
                "note": "local folder" + ("" if found else " (does not exist)")}
    from ldp.errors import NotFoundError
    from ldp.store import Registry

    try:
        reg = Registry(spec.registry)
        resolved = str(reg.resolve(ref))
    except NotFoundError:
        buildable = spec.size == "tiny" and spec.auto_base and spec.base is None
        note = (
            "not in the registry yet: built on first use (MiniLM warm start)" if buildable else
            f"not in the registry: a {spec.size} base can only come from a registry reference "
            f"(--base bases/NAME@VERSION, published by `ldp pretrain --size {spec.size}` or "
            "`ldp registry publish`) or a local folder (--base DIR)"
        )
        return {"ref": ref, "kind": "registry", "found": False, "note": note}
    except Exception as exc:  # unreachable store, missing credentials: say which
        return {"ref": ref, "kind": "registry", "found": False,
                "note": f"registry unreachable: {first_line(exc, with_type=True)}"}
    return {"ref": ref, "kind": "registry", "found": True, "note": f"registry {reg.url}: {resolved}"}


def plan_job(spec: Any, *, gpus: int, gpu_mem_gb: float | None, gpus_per_node: int = 8) -> dict[str, Any]:
    """The plan as a JSON-able dict (see the module docstring). ``gpus`` 0 plans CPU workers."""
    from ldp.cluster import choose_strategy, deepspeed_config, estimate_strategies
    from ldp.cluster.activations import ActivationShape, activation_bytes
    from ldp.data.tasks import get_task
    from ldp.jobs.spec import train_config
    from ldp.models.sizes import count_parameters, size_config
    from ldp.training.recipes.adapter import validate

    cfg = validate(train_config(spec))
    task = get_task(spec.task)
    shape_cfg = size_config(spec.size)
    counts = count_parameters(shape_cfg)
    trainable = trainable_on_meta(spec.size, spec.method, cfg.method_config)
    bf16 = cfg.loop.precision == "bf16"
    dtype_bytes = 2 if bf16 or cfg.method_config.get("base_dtype") == "bf16" else 4
    prompt = cfg.max_prompt_len or task.max_prompt_tokens
    answer = (cfg.max_target_len or task.max_new_tokens) + 1  # + EOS
    through = grad_through_base(spec.method, cfg.method_config)
    act = activation_bytes(
        ActivationShape(batch=cfg.loop.batch_size, seq_len=prompt + answer, answer_len=answer,
                        hidden=shape_cfg.hidden_size, layers=shape_cfg.num_hidden_layers,
                        ffn=shape_cfg.intermediate_size, vocab=shape_cfg.vocab_size,
                        dtype_bytes=2 if bf16 else 4),
        grad_through_base=through,
    )
    ranks = max(1, gpus) if gpus else spec.workers
    estimates = estimate_strategies(
        counts["total"], trainable, ranks, base_dtype_bytes=dtype_bytes, activation_bytes=act,
        largest_layer_params=counts["largest_layer"],
    )
    fits = True
    if spec.strategy != "auto":
        strategy, reason = spec.strategy, "given by --strategy"
    elif gpus and gpu_mem_gb:
        try:
            strategy, reason = choose_strategy(estimates, min(gpus, gpus_per_node), int(gpu_mem_gb * 1e9), gpus)
        except LdpError as exc:
            strategy, reason, fits = "none", str(exc), False
    elif gpus:
        strategy, reason = "zero3", "no --gpu-mem given: ZeRO-3 shards the most without offload"
    else:
        strategy, reason = "ddp", "no GPUs: CPU workers over gloo, plain data parallel"
    ds = None
    if strategy != "none":
        ds = deepspeed_config(strategy, micro_batch=cfg.loop.batch_size, grad_accum=cfg.loop.grad_accum,
                              grad_clip=cfg.optim.grad_clip,
                              bf16=bf16, on_gpu=bool(gpus))
        if spec.deepspeed:
            from ldp.config import apply_overrides

            ds = apply_overrides(ds, _flatten(spec.deepspeed))
    est = estimates.get(strategy) if strategy != "none" else None
    nodes = math.ceil(ranks / gpus_per_node) if gpus else 1
    return {
        "job": {"task": spec.task, "size": spec.size, "method": spec.method,
                "steps": cfg.loop.max_steps, "micro_batch": cfg.loop.batch_size,
                "grad_accum": cfg.loop.grad_accum, "seq_len": prompt + answer,
                "precision": cfg.loop.precision},
        "model": {"params": counts["total"], "trainable_params": trainable,
                  "largest_layer_params": counts["largest_layer"],
                  "base_dtype_bytes": dtype_bytes, "grad_through_base": through},
        "hardware": {"gpus": gpus, "gpu_mem_gb": gpu_mem_gb, "gpus_per_node": gpus_per_node, "nodes": nodes},
        "strategy": {"name": strategy, "reason": reason, "fits": fits},
        "memory_per_gpu": None if est is None else {
            "base_weights": est.breakdown["params"],
            "adapter_grads": est.breakdown["grads"],
            "adapter_optimizer_states": est.breakdown["optimizer_states"],
            "activations": est.breakdown["activations"],
            "total": est.per_gpu_bytes,
            "host_offload_per_node": est.cpu_bytes_per_node(min(max(gpus, 1), gpus_per_node)),
        },
        "all_strategies": {s: e.per_gpu_bytes for s, e in estimates.items()},
        "deepspeed": ds,
        "placement": {
            "workers": ranks,
            "per_worker": {"GPU": 1, "CPU": 1} if gpus else {"CPU": 1},
            "strategy": "PACK",
            "note": f"{ranks} Ray Train worker(s) in one placement group, packed onto {nodes} node(s)",
        },
        "base": _base_source(spec),
    }


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def render_plan(plan: dict[str, Any]) -> str:
    """The plan as text for a terminal."""
    import json

    from ldp.units import format_bytes, format_count

    j, m, h, s = plan["job"], plan["model"], plan["hardware"], plan["strategy"]
    hw = f"{h['gpus']} GPU(s) of {h['gpu_mem_gb']} GB on {h['nodes']} node(s)" if h["gpus"] else "CPU workers"
    lines = [
        f"job:       {j['method']} adapter for {j['task']} on a {j['size']} base, {j['steps']} steps, "
        f"micro-batch {j['micro_batch']} x {j['seq_len']} tokens, {j['precision']}",
        f"model:     {format_count(m['params'])} params, {format_count(m['trainable_params'])} trainable; "
        + ("backward runs through the base" if m["grad_through_base"] else "base forward without autograd"),
        f"hardware:  {hw}",
        f"strategy:  {s['name']} - {s['reason']}",
    ]
    mem = plan["memory_per_gpu"]
    if mem:
        lines.append(
            "memory:    per GPU " + ", ".join(
                f"{k.replace('_', ' ')} {format_bytes(v)}" for k, v in mem.items() if k != "host_offload_per_node"
            ) + (f"; host {format_bytes(mem['host_offload_per_node'])}/node" if mem["host_offload_per_node"] else "")
        )
    lines.append("           all strategies: " + ", ".join(
        f"{k} {format_bytes(v)}" for k, v in plan["all_strategies"].items()))
    p = plan["placement"]
    lines.append(f"placement: {p['note']}, {p['per_worker']} per worker, {p['strategy']}")
    b = plan["base"]
    lines.append(f"base:      {b['ref']}: {b['note']}")
    if plan["deepspeed"]:
        lines.append("deepspeed: " + json.dumps(plan["deepspeed"], sort_keys=True))
    return "\n".join(lines)
