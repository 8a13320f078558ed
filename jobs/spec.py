"""The adapter job spec: everything ``ldp submit`` needs, validated before any Ray work starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ldp.config import build, to_dict
from ldp.errors import UsageError

__all__ = ["JobSpec", "validate_spec", "train_config", "BASE_WARM_START_STEPS"]

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
        from ldp.models.sizes import size_names

        if self.size not in size_names():
            raise ValueError(f"unknown size {self.size!r}; choose from {', '.join(size_names())}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        if self.steps is not None and self.steps < 1:
            raise ValueError("steps must be >= 1")
        if self.checkpoint_every < 1:
            raise ValueError("checkpoint_every must be >= 1")
        if self.max_failures < 0:
            raise ValueError("max_failures must be >= 0")
        # Ray workers run in other folders (and on other machines): local paths travel absolute.
        self.data_dir = _absolute(self.data_dir)
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


def validate_spec(data: dict[str, Any]) -> JobSpec:
    """Build the spec and its recipe config; check the base exists or can be built."""
    spec = build(JobSpec, data)
    train_config(spec)
    from ldp.bases import is_registry_ref

    ref = spec.base_ref
    if is_registry_ref(ref):
        from ldp.store import Registry

        reg = Registry(spec.registry)
        try:
            reg.resolve(ref)
        except Exception as exc:  # NotFoundError and friends
            buildable = spec.size == "tiny" and spec.auto_base and spec.base is None
            if not buildable:
                raise UsageError(
                    f"no base {ref} in registry {reg.url}: pass --base REF/FOLDER or build one with "
                    f"`ldp pretrain --size {spec.size}`"
                ) from exc
    else:
        from ldp.bases import resolve_base

        resolve_base(ref)
    return spec
