"""The ``train-all`` pipeline spec and the hashes that make the pipeline resumable.

A pipeline is fully described by :class:`PipelineSpec`. From it come one adapter
:class:`~ldp.jobs.spec.JobSpec` per task (:func:`child_specs`) and one router job spec. Each child
spec, once resolved (the base pinned to a concrete version), has a :func:`spec_hash`; an adapter
already published with that hash (in its registry metadata, or recomputed from the
``job_spec.yaml`` it was published with) is reused instead of trained again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from ldp.config import build, to_dict
from ldp.errors import UsageError

__all__ = [
    "PipelineSpec",
    "child_spec",
    "comparison_eval_settings",
    "router_job_spec",
    "spec_hash",
    "validate_pipeline",
]

_RESULT_NEUTRAL = (
    "storage_path", "max_failures", "checkpoint_every", "registry", "auto_base", "base_steps", "cpus_per_worker",
)
"""JobSpec fields that do not change what a job produces (where checkpoints go, how often, how
many restarts, how many threads; the exact resume makes the result independent of them)."""


@dataclass
class PipelineSpec:
    kind: Literal["train-all"] = "train-all"
    size: str = "tiny"
    """Base size; the base is ``bases/<size>@latest`` unless ``base`` is given."""
    tasks: list[str] = field(default_factory=lambda: ["all"])
    """Task keys, or ``["all"]`` for every task (those without data are skipped)."""
    method: str = "lora-diffusion"
    """Adapter method; composition needs final-state adapters (``lora-diffusion``)."""
    name: str | None = None
    """Bundle (and router) name; default ``<size>-<method>``."""
    base: str | None = None
    steps: int | None = None
    """Optimiser steps per task adapter."""
    task_steps: dict[str, int] = field(default_factory=dict)
    """Per-task steps that replace ``steps`` for those tasks' adapters (``{squad: 100}``)."""
    router_steps: int | None = None
    """Optimiser steps of the router (default: the router recipe's)."""
    max_parallel: int | None = None
    """At most this many adapter jobs at once (default: as many as the cluster's CPUs place)."""
    workers: int = 1
    """Ray Train workers per adapter job."""
    strategy: Literal["auto", "ddp", "zero2", "zero3", "zero3-offload"] = "auto"
    registry: str | None = None
    data_dir: str | None = None
    storage_path: str | None = None
    checkpoint_every: int = 50
    max_failures: int = 2
    auto_base: bool = True
    """Build the ``tiny`` base (MiniLM warm start) when the registry has none."""
    base_steps: int | None = None
    train: dict[str, Any] = field(default_factory=dict)
    """Adapter recipe overrides applied to every task (``loop.batch_size``, ``eval.limit``...)."""
    router: dict[str, Any] = field(default_factory=dict)
    """Router recipe overrides (``per_phase``, ``hidden``, ``task_weight``, ``loop.*``...)."""
    compare: bool = True
    """After the router: evaluate router / uniform / oracle / base per task (Table 11)."""
    eval_limit: int | None = 100
    """Validation examples per task in that comparison (and the router's accuracy)."""

    def __post_init__(self) -> None:
        from ldp.jobs.spec import _absolute, check_task_steps
        from ldp.models.sizes import size_names

        if self.size not in size_names():
            raise ValueError(f"unknown size {self.size!r}; choose from {', '.join(size_names())}")
        if isinstance(self.tasks, str):
            self.tasks = [t for t in self.tasks.split(",") if t.strip()]
        self.tasks = [t.strip() for t in self.tasks]
        if not self.tasks:
            raise ValueError("tasks must name at least one task (or 'all')")
        for key in ("steps", "router_steps", "max_parallel", "eval_limit"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ValueError(f"{key} must be >= 1, got {value}")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")
        self.task_steps = check_task_steps(self.task_steps, None if self.tasks == ["all"] else self.tasks)
        self.data_dir = self.data_dir if self.data_dir == "hub" else _absolute(self.data_dir)
        self.registry = _absolute(self.registry)
        self.storage_path = _absolute(self.storage_path)
        if self.base is not None and not self.base.startswith("bases/"):
            self.base = _absolute(self.base)

    @property
    def bundle_name(self) -> str:
        return self.name or f"{self.size}-{self.method}"


def spec_hash(
    data: dict[str, Any], *, ran_on: str | None = None, ran_with: dict[str, Any] | None = None
) -> str:
    """sha256 (first 16 hex) of a resolved job spec, ignoring fields that do not change its
    result (:data:`_RESULT_NEUTRAL`).

    For an adapter job the recipe overrides (``train``) are replaced by the recipe config they
    resolve to, defaults filled in: a spec that writes a default out (``eval.limit: 200``, as
    ``ldp compare`` does) and one that leaves it implicit (as ``ldp submit`` does) describe the
    same run and hash the same. ``steps`` is then part of that config (``loop.max_steps``), so
    ``steps: null`` and the recipe's default number hash alike; the method's config is filled in
    with the method's defaults too. ``ran_with`` is the recipe config a published job actually
    ran (its ``job_config.json``, the method config as its adapter saved it): it replaces what the
    spec resolves to under today's defaults, so that a default changed since (the steps, the
    method's form) does not make an old run pass for a new one. ``ran_on`` is the concrete base a
    published job trained on (its manifest's base ref): it stands for an unpinned ``base`` (none,
    or ``@latest``), so the README's ``ldp submit`` and a ``compare`` cell pinned to the base
    that ``@latest`` was then describe the same run. A spec the recipe no longer accepts hashes
    its overrides as written (it then matches nothing new)."""
    data = to_dict(data)
    if ran_on and _unpinned(data.get("base")):
        data = {**data, "base": ran_on}
    plain = {k: v for k, v in data.items() if k not in _RESULT_NEUTRAL}
    if plain.get("kind", "adapter") == "adapter" and "task" in plain:
        resolved = _without_locations(ran_with) if ran_with is not None else _resolved_train(data)
        if resolved is not None:
            plain["train"] = resolved
            plain.pop("steps", None)
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _unpinned(base: Any) -> bool:
    """A base that names no version: none (``bases/<size>@latest``), ``@latest`` or an alias.
    A folder is pinned (it is what it is)."""
    from ldp.store.refs import parse_ref

    if not base:
        return True
    try:
        ref = parse_ref(base)
    except UsageError:  # a folder, not a registry reference
        return False
    return ref.kind == "bases" and not ref.concrete


def _resolved_train(data: dict[str, Any]) -> dict[str, Any] | None:
    """The adapter recipe config of an adapter job spec under today's defaults (the method's
    config filled in), minus where things are stored."""
    from ldp.jobs.spec import JobSpec, train_config
    from ldp.methods import get_method

    try:
        spec = build(JobSpec, {k: v for k, v in to_dict(data).items() if k != "kind"}, where="job")
        config = train_config(spec, spec.base)
        method = get_method(config["method"])
        config["method_config"] = to_dict(method.build_config(config.get("method_config") or {}))
    except Exception:  # noqa: BLE001 - an old or invalid spec hashes as written
        return None
    return _without_locations(config)


def _without_locations(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in ("registry", "data_dir")}


def child_spec(spec: PipelineSpec, task: str, base: str | None = None) -> dict[str, Any]:
    """The adapter :class:`JobSpec` (as a dict) of ``task``; ``base`` pins a concrete base."""
    from ldp.jobs.spec import JobSpec, steps_for

    data: dict[str, Any] = {
        "task": task, "size": spec.size, "method": spec.method, "base": base or spec.base,
        "steps": steps_for(task, spec.steps, spec.task_steps), "workers": spec.workers,
        "strategy": spec.strategy, "registry": spec.registry, "data_dir": spec.data_dir,
        "storage_path": spec.storage_path, "checkpoint_every": spec.checkpoint_every, "max_failures": spec.max_failures,
        "auto_base": spec.auto_base, "train": dict(spec.train),
        "cpus_per_worker": 1,  # cells train side by side, a worker group per free CPU
    }
    if spec.base_steps is not None:
        data["base_steps"] = spec.base_steps
    return to_dict(build(JobSpec, data, where="train-all"))


def comparison_eval_settings(spec: PipelineSpec, base: str) -> dict[str, Any]:
    """How the composition comparison scores each task: the adapter jobs' own evaluation
    settings (mode, sampling steps, ELBO samples, batch, prompt budget, diffusion process), so
    that its ``oracle`` column scores each adapter as its own job did. The split and the number
    of examples stay the pipeline's (``eval_limit``)."""
    from ldp.config import apply_overrides
    from ldp.training.recipes.adapter import scoring_settings, validate

    return scoring_settings(validate(apply_overrides(dict(spec.train), {"method": spec.method, "base": base})))


def router_job_spec(spec: PipelineSpec, base: str, adapters: dict[str, str]) -> dict[str, Any]:
    """The router job's spec (kind ``router``): the router recipe config plus how to run it."""
    from ldp.config import apply_overrides

    config = apply_overrides(dict(spec.router), {
        "tasks": list(adapters), "adapters": dict(adapters), "base": base,
        "registry": spec.registry, "data_dir": spec.data_dir,
    })
    if spec.router_steps is not None:
        config = apply_overrides(config, {"loop.max_steps": spec.router_steps})
    return {
        "kind": "router", "name": spec.bundle_name, "config": config, "workers": spec.workers,
        "strategy": spec.strategy, "registry": spec.registry, "storage_path": spec.storage_path,
        "checkpoint_every": spec.checkpoint_every, "max_failures": spec.max_failures,
    }


def validate_pipeline(data: dict[str, Any]) -> PipelineSpec:
    """Build and check the whole pipeline before any Ray work: tasks, method, every child spec
    (with the base as it will be resolved) and the router overrides."""
    from ldp.data.tasks import task_names
    from ldp.jobs.spec import validate_spec
    from ldp.store.refs import check_name

    spec = build(PipelineSpec, data)
    check_name(spec.bundle_name, what="bundle name")
    known = task_names()
    if spec.tasks == ["all"]:
        spec.tasks = list(known)
    unknown = [t for t in spec.tasks if t not in known]
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)}; see `ldp tasks`")
    if len(set(spec.tasks)) != len(spec.tasks):
        raise UsageError(f"tasks has duplicates: {','.join(spec.tasks)}")
    if spec.method == "weight-lora":
        raise UsageError(
            "--method weight-lora adapters cannot be routed by train-all: its router learns through "
            "the composed model's denoising loss with a different mix per row, and weight-lora "
            "adapters compose only by a peft weighted merge (one merge per weight vector, rebuilt "
            "whenever the mix changes); use --method lora-diffusion, or compare weight-lora merges "
            "with `ldp eval --mix TASK=REF,... --task T --weights uniform|oracle|JSON`"
        )
    if spec.method != "lora-diffusion" or spec.train.get("method_config", {}).get("inject_layers"):
        raise UsageError(
            "train-all composes final-state lora-diffusion adapters (one base forward per step, "
            f"shared by every adapter); --method {spec.method} adapters cannot be routed "
            "(they change the base itself or inject into its layers): use --method lora-diffusion"
        )
    for task in spec.tasks:
        validate_spec(child_spec(spec, task))
    _check_router_overrides(spec)
    return spec


def _check_router_overrides(spec: PipelineSpec) -> None:
    from ldp.config import apply_overrides
    from ldp.training.recipes.router import validate

    placeholder = {t: f"adapters/{t}/{spec.method}@latest" for t in spec.tasks}
    config = apply_overrides(dict(spec.router), {"tasks": list(spec.tasks), "adapters": placeholder})
    if spec.router_steps is not None:
        config = apply_overrides(config, {"loop.max_steps": spec.router_steps})
    try:
        validate(config)
    except UsageError as exc:
        raise UsageError(f"router settings: {exc}") from None
