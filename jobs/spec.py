"""The adapter job spec: everything ``ldp submit`` needs, validated before any Ray work starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ldp.config import build, to_dict
from ldp.errors import UsageError

__all__ = [
    "BASE_WARM_START_STEPS", "MAX_STEPS", "JobSpec", "check_method_steps", "check_spec", "check_steps_map",
    "check_task_steps", "steps_for", "train_config", "validate_spec",
]

BASE_WARM_START_STEPS = 150
"""Steps of the masked-diffusion warm start that builds the default ``tiny`` base on first use."""


@dataclass
class JobSpec:
    kind: Literal["adapter"] = "adapter"
    task: str = "sst2"
    """Task key (``ldp tasks``)."""
    size: str = "tiny"
    """Base size; picks the default base ``bases/<size>@latest``."""
    method: str = "lora-diffusion"
    base: str | None = None
    """Registry reference or folder of the frozen base (default ``bases/<size>@latest``)."""
    steps: int | None = None
    """Optimiser steps (overrides ``train.loop.max_steps``)."""
    workers: int = 1
    """Ray Train workers (data parallel)."""
    cpus_per_worker: float | None = None
    """CPUs each worker holds, and so its intra-op threads. None (default): a one-node cluster's
    CPUs shared out among the workers (a lone job on a 2-core machine computes on both cores;
    measured 1.75x faster steps than on one), 1 on larger clusters and for GPU workers. Jobs
    that run side by side (``ldp compare``, ``ldp train-all`` cells) hold 1 each."""
    strategy: Literal["auto", "ddp", "zero2", "zero3", "zero3-offload"] = "auto"
    use_gpu: bool = False
    registry: str | None = None
    data_dir: str | None = None
    checkpoint_every: int = 50
    """Report a checkpoint to Ray storage every N steps (resume point after a failure)."""
    max_failures: int = 2
    """Worker-group restarts from the last checkpoint before the job fails."""
    storage_path: str | None = None
    """Ray storage for checkpoints and metrics (default ``~/.ldp/runs``)."""
    auto_base: bool = True
    """Build the ``tiny`` base (MiniLM warm start) when the registry has none."""
    base_steps: int = BASE_WARM_START_STEPS
    train: dict[str, Any] = field(default_factory=dict)
    """Adapter recipe config (``ldp.training.recipes.adapter.AdapterConfig``) overrides."""
    deepspeed: dict[str, Any] = field(default_factory=dict)
    """Merged into the generated DeepSpeed config."""

    def __post_init__(self) -> None:
        from ldp.models.presets import size_names

        if self.size not in size_names():
            raise ValueError(f"unknown size {self.size!r}; choose from {', '.join(size_names())}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.cpus_per_worker is not None and not self.cpus_per_worker > 0:
            raise ValueError("cpus_per_worker must be > 0")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        if self.max_failures < 0:
            raise ValueError("max_failures must be >= 0")
        # Ray workers run in other folders (and on other machines): local paths travel absolute.
        self.data_dir = self.data_dir if self.data_dir == "hub" else _absolute(self.data_dir)
        self.registry = _absolute(self.registry)
        self.storage_path = _absolute(self.storage_path)
        if self.base is not None and not self.base.startswith("bases/"):
            self.base = _absolute(self.base)

    @property
    def base_ref(self) -> str:
        return self.base or f"bases/{self.size}@latest"


def _absolute(path: str | None) -> str | None:
    """A local path made absolute; URLs (``s3://``, ``file://``) and None unchanged."""
    if path is None or "://" in path:
        return path
    from pathlib import Path

    return str(Path(path).expanduser().resolve())


def check_steps_map(
    field: str, values: dict[str, Any] | None, canon: Callable[[str], str], allowed: list[str] | None = None,
    noun: str = "names",
) -> dict[str, int]:
    """A map of step budgets by name (``task_steps``, ``method_steps``: ``{name: steps}``) of a
    multi-run spec, checked: ``canon`` accepts every name (it raises for an unknown one and gives
    the name's canonical spelling), each name is one of ``allowed`` (the spec's ``noun``) when that
    is given and is not given twice, and every value is a whole number >= 1 (ValueError). Names
    come back spelled as in ``allowed`` (as given when ``allowed`` is None)."""
    spelled = {canon(a): a for a in allowed} if allowed is not None else None
    out: dict[str, int] = {}
    for name, steps in dict(values or {}).items():
        key = canon(name)
        if spelled is not None and key not in spelled:
            raise ValueError(f"{field}.{name}: {name} is not one of the {noun} ({', '.join(allowed or [])})")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"{field}.{name} must be a whole number >= 1, got {steps!r}")
        own = spelled[key] if spelled is not None else name
        if own in out:
            raise ValueError(f"{field}.{name}: {own} is given twice")
        out[own] = steps
    return out


def check_task_steps(task_steps: dict[str, Any], tasks: list[str] | None = None) -> dict[str, int]:
    """Per-task step budgets (``{task: steps}``) of a multi-task spec, checked: known tasks (and,
    when ``tasks`` is given, tasks the spec runs), whole numbers >= 1 (ValueError)."""
    from ldp.data.tasks import get_task

    return check_steps_map("task_steps", task_steps, lambda t: get_task(t).name, tasks, "tasks")


def check_method_steps(method_steps: dict[str, Any], methods: list[str] | None = None) -> dict[str, int]:
    """Per-method step budgets (``{method: steps}``) of a multi-method spec, checked: known methods
    (``weight_lora`` is ``weight-lora``; and, when ``methods`` is given, methods the spec runs),
    whole numbers >= 1 (ValueError)."""
    from ldp.methods import get_method

    return check_steps_map("method_steps", method_steps, lambda m: get_method(m).name, methods, "methods")


def steps_for(
    task: str, steps: int | None, task_steps: dict[str, int] | None,
    method: str | None = None, method_steps: dict[str, int] | None = None,
) -> int | None:
    """The optimiser steps of the ``task`` (and ``method``) run: its task's or its method's own
    budget when it has one, the LARGER of the two when it has both, else the shared ``steps``.
    Generation tasks cost several times a classification step (longer sequences), so a
    multi-task budget on a small machine gives them fewer steps; methods learn at different
    speeds (weight LoRA needs ~900 steps on sst2 where lora-diffusion needs 300), so a fair
    comparison gives each method its own."""
    own = [n for n in ((task_steps or {}).get(task), (method_steps or {}).get(method or "")) if n is not None]
    return max(own) if own else steps


def train_config(spec: JobSpec, base: str | None = None) -> dict[str, Any]:
    """The adapter recipe's config dict for ``spec`` (validated)."""
    from ldp.config import apply_overrides
    from ldp.training.recipes.adapter import validate

    data = apply_overrides(spec.train, {
        "task": spec.task, "method": spec.method, "base": base or spec.base_ref,
        "registry": spec.registry, "data_dir": spec.data_dir,
    })
    if spec.steps is not None:
        data = apply_overrides(data, {"loop.max_steps": spec.steps})
    return to_dict(validate(data))


MAX_STEPS = 100_000_000
"""More optimiser steps than any job could run: a larger number is a typo (``1e23``)."""

_DS_SECTIONS = ("zero_optimization", "bf16", "fp16", "optimizer", "scheduler", "activation_checkpointing")


def _check_numbers(spec: JobSpec, cfg: Any) -> None:
    """Values the recipe would only trip over after training (evaluation settings) or never
    (a step count no job can reach), refused now."""
    loop, ev = cfg.loop, cfg.eval
    if loop.max_steps > MAX_STEPS:
        raise UsageError(f"steps: {loop.max_steps} is more than {MAX_STEPS:,}")
    if not (0 < cfg.optim.lr < 10):
        raise UsageError(f"optim.lr must be in (0, 10), got {cfg.optim.lr}")
    if ev.batch_size < 1:
        raise UsageError(f"eval.batch_size must be >= 1, got {ev.batch_size}")
    if ev.steps is not None and ev.steps < 1:
        raise UsageError(f"eval.steps must be >= 1, got {ev.steps}")
    if ev.elbo_samples < 1:
        raise UsageError(f"eval.elbo_samples must be >= 1, got {ev.elbo_samples}")
    if spec.base_steps < 1:
        raise UsageError(f"base_steps must be >= 1, got {spec.base_steps}")
    for key in _DS_SECTIONS:
        if key in spec.deepspeed and not isinstance(spec.deepspeed[key], dict):
            raise UsageError(f"deepspeed.{key}: expected a section (mapping), got {spec.deepspeed[key]!r}")
    stage = (spec.deepspeed.get("zero_optimization") or {}).get("stage")
    if stage is not None and stage not in (0, 1, 2, 3):
        raise UsageError(f"deepspeed.zero_optimization.stage must be 0-3, got {stage!r}")


def _check_locations(spec: JobSpec) -> None:
    """URLs with a scheme fsspec cannot serve, and local folders that cannot be written."""
    from ldp import checks

    checks.registry_location("registry", spec.registry)
    checks.data_location("data_dir", spec.data_dir)
    if spec.storage_path and "://" not in spec.storage_path:
        checks.output_folder("storage_path", spec.storage_path)
    elif spec.storage_path:
        checks.data_location("storage_path", spec.storage_path)


def _check_data(spec: JobSpec) -> None:
    """The task's training and validation data exist in a local mirror (the hub is checked by
    the loader itself; it cannot be reached cheaply)."""
    if not spec.data_dir or "://" in spec.data_dir or spec.data_dir == "hub":
        return
    from pathlib import Path

    from ldp.data.tasks import get_task

    task = get_task(spec.task)
    for split in ("train", "validation"):
        paths = [Path(spec.data_dir) / task.name / f"{split}{suffix}" for suffix in (".jsonl", ".parquet")]
        if not any(p.is_file() and p.stat().st_size > 0 for p in paths):
            raise UsageError(f"no {split} data for {task.name}: {paths[0]} is missing or empty")


def _check_resources(spec: JobSpec, address: str | None = None) -> None:
    """Workers and GPUs the cluster the job will run on could never give, where that is known
    without connecting: an embedded local Ray (this machine's CPUs and GPUs) or the head started
    by ``ldp cluster up`` (the CPUs it was started with). The address is resolved as
    :func:`ldp.cluster.connect` resolves it (``--address``, ``RAY_ADDRESS``, the recorded head);
    other clusters are checked by the runner when it connects."""
    import os

    from ldp.cluster.connect import local_head_at, resolve_address

    kind, addr = resolve_address(address)
    if kind == "local":
        cpus, where, hint = os.cpu_count() or 1, "this machine has", " (use --address for a cluster)"
    else:
        head = local_head_at(kind, addr)
        if head is None:
            return
        cpus, where, hint = head.num_cpus, f"the head started by `ldp cluster up` ({head.address}) has", ""
    if spec.workers > cpus:
        raise UsageError(f"--workers {spec.workers} needs {spec.workers} CPUs; {where} {cpus}{hint}")
    if spec.cpus_per_worker is not None and spec.workers * spec.cpus_per_worker > cpus:
        need = spec.workers * spec.cpus_per_worker
        raise UsageError(f"--workers {spec.workers} x --cpus-per-worker {spec.cpus_per_worker:g} needs "
                         f"{need:g} CPUs; {where} {cpus}{hint}")
    if spec.use_gpu and kind == "local":
        try:
            import torch

            have = torch.cuda.device_count()
        except Exception:  # noqa: BLE001 - no CUDA build at all
            have = 0
        if have < spec.workers:
            raise UsageError(
                f"use_gpu with {spec.workers} worker(s) needs {spec.workers} GPU(s); this machine has "
                f"{have} (use --address for a GPU cluster)"
            )


def check_spec(spec: JobSpec) -> dict[str, Any]:
    """Every check that needs no network and no model: the recipe config, numbers, locations,
    the local data mirror. Returns the recipe config dict."""
    from ldp.training.recipes.adapter import validate

    config = train_config(spec)
    _check_numbers(spec, validate(config))
    _check_locations(spec)
    _check_data(spec)
    return config


def validate_spec(data: dict[str, Any], *, local: bool = True, address: str | None = None) -> JobSpec:
    """Build the spec and check everything before any expensive work: :func:`check_spec`, the
    resources of the cluster at ``address`` where they are known without connecting (with
    ``local``; see :func:`_check_resources`), the registry reachable, and the base present there
    (or buildable: the default ``tiny``)."""
    spec = build(JobSpec, data)
    check_spec(spec)
    if local:
        _check_resources(spec, address)
    from ldp.bases import is_registry_ref
    from ldp.errors import LdpError, NotFoundError, first_line

    ref = spec.base_ref
    if is_registry_ref(ref):
        from ldp.store import Registry

        try:
            reg = Registry(spec.registry)
            reg.resolve(ref)
        except NotFoundError as exc:
            buildable = spec.size == "tiny" and spec.auto_base and spec.base is None
            if not buildable:
                raise UsageError(
                    f"no base {ref} in registry {reg.url}: pass --base REF/FOLDER or build one with "
                    f"`ldp pretrain --size {spec.size}`"
                ) from exc
        except LdpError:
            raise
        except Exception as exc:  # unreachable store, missing credentials, bad bucket
            raise LdpError(
                f"registry {spec.registry or 'default'} unreachable: {first_line(exc, with_type=True)}"
            ) from exc
    else:
        from ldp.bases import resolve_base

        resolve_base(ref)
    return spec
