"""Where a job's workers go: a Ray Train (V2) ``ScalingConfig``.

Planning past one node is Ray's placement, not a scheduler of ours. Ray Train reserves one
*placement group* per run with one bundle per worker (``{"CPU": c, "GPU": g}``) and starts the
workers only when the whole group is placed, so a job never runs half-placed:

- ``PACK`` (default): bundles on as few nodes as possible — data-parallel all-reduces stay on
  NVLink/PCIe inside a node where they can; spills onto more nodes when one is not enough.
- ``SPREAD``: bundles across nodes — for CPU-bound or host-memory-bound jobs (e.g.
  ``zero3-offload``, whose optimizer lives in host RAM), and for fault isolation.
- ``STRICT_PACK`` / ``STRICT_SPREAD``: hard versions (all on one node / one per node).

Many tasks at once (``ldp train-all``, sweeps) are many such placement groups; Ray queues those
that do not fit yet and starts them as others finish. :func:`ldp.cluster.check_fits` rejects the
ones that could never be placed before they queue forever.
"""

from __future__ import annotations

from typing import Any

from ldp.errors import UsageError

__all__ = ["PLACEMENT_STRATEGIES", "scaling_config", "worker_resources"]

PLACEMENT_STRATEGIES: tuple[str, ...] = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


def worker_resources(
    use_gpu: bool,
    cpus_per_worker: float = 1,
    gpus_per_worker: float | None = None,
    memory_per_worker_bytes: int | None = None,
) -> dict[str, float]:
    """One worker's placement-group bundle (the dict Ray Train reserves per worker)."""
    if gpus_per_worker is None:
        gpus_per_worker = 1 if use_gpu else 0
    if cpus_per_worker < 0 or gpus_per_worker < 0:
        raise UsageError("CPUs and GPUs per worker must be >= 0")
    if gpus_per_worker and not use_gpu:
        raise UsageError(f"gpus_per_worker={gpus_per_worker} needs use_gpu=True")
    if use_gpu and gpus_per_worker <= 0:
        raise UsageError("use_gpu=True needs gpus_per_worker > 0")
    if not use_gpu and cpus_per_worker <= 0:
        raise UsageError("a CPU worker needs cpus_per_worker > 0")
    bundle: dict[str, float] = {}
    if cpus_per_worker:
        bundle["CPU"] = cpus_per_worker
    if use_gpu:
        bundle["GPU"] = gpus_per_worker
    if memory_per_worker_bytes:
        if memory_per_worker_bytes < 0:
            raise UsageError("memory per worker must be >= 0")
        bundle["memory"] = int(memory_per_worker_bytes)
    return bundle


def scaling_config(
    num_workers: int,
    use_gpu: bool = False,
    cpus_per_worker: float = 1,
    gpus_per_worker: float | None = None,
    placement_strategy: str = "PACK",
    *,
    memory_per_worker_bytes: int | None = None,
    **extra: Any,
) -> Any:
    """A ``ray.train.ScalingConfig`` (Train V2) for ``num_workers`` data-parallel workers.

    ``gpus_per_worker`` defaults to 1 with ``use_gpu`` (one GPU per rank, as DeepSpeed expects).
    ``num_workers`` must be >= 1: Train's ``num_workers=0`` "local mode" runs in-process, persists
    no checkpoint and cannot run DeepSpeed. ``extra`` is passed to ``ScalingConfig`` as is
    (e.g. ``accelerator_type``, ``label_selector``).
    """
    from ray.train import ScalingConfig

    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 1:
        raise UsageError(
            f"--workers must be an integer >= 1, got {num_workers!r} (Ray Train's 0 is an "
            "in-process local mode that cannot run DeepSpeed)"
        )
    strategy = placement_strategy.upper()
    if strategy not in PLACEMENT_STRATEGIES:
        raise UsageError(
            f"unknown placement strategy {placement_strategy!r}; "
            f"choose one of {', '.join(PLACEMENT_STRATEGIES)}"
        )
    bundle = worker_resources(use_gpu, cpus_per_worker, gpus_per_worker, memory_per_worker_bytes)
    return ScalingConfig(
        num_workers=num_workers,
        use_gpu=use_gpu,
        resources_per_worker=bundle,
        placement_strategy=strategy,
        **extra,
    )
