"""Child jobs run side by side as Ray tasks: the engine under ``train-all``, ``compare`` and
``report``.

A pipeline job (the *parent*) often has many ordinary adapter jobs to run (the *children*): one per
task, or one per (task, method) cell. Each child runs as a Ray task whose body is the same
``run_job`` an ``ldp submit`` runs, so every child has its own record (``ldp status``/``ldp logs``
work on it), its own Ray Train run and checkpoints, and shows on the Ray dashboard under its name.

Ray places the tasks. The parent only caps how many are in flight: at most ``limit``, and never
more than the cluster's CPUs hold worker groups (a Ray Train worker group that cannot be placed
waits and then fails its start, so a parent must not hand Ray more than it can place). On a
2-core machine two one-worker children run at once. That wins back each child's start-up (Ray
Train's actors, imports) and evaluation idle time, not training throughput: two sst2 cells ran
at 0.5-0.6 steps/s each where one alone runs at 1.3.

A child's job id is chosen when it starts (``open_job``), not when it is queued, so a parent killed
with children still queued leaves no PENDING record behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["child_env", "child_error", "run_children", "worker_group_slots"]

_FORWARDED = (
    "LDP_HOME", "LDP_REGISTRY", "LDP_DATA_DIR", "LDP_CACHE", "TORCH_EXTENSIONS_DIR",
    "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
)
"""Environment a child's driver, and a training run's workers, need from the process that
started them (Ray workers do not inherit it): only what is set there is passed."""


def child_env() -> dict[str, str]:
    return {k: os.environ[k] for k in _FORWARDED if os.environ.get(k)}


def worker_group_slots(workers: int) -> int:
    """How many Ray Train worker groups of ``workers`` one-CPU workers the cluster holds at once."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1))
    return max(1, int(cpus // max(1, workers)))


def child_error(job_id: str, exc: BaseException) -> str:
    """One line for a failed child: its record's error, else the exception's last line."""
    from ldp.jobs import records

    try:
        error = records.get_job(job_id).error
    except Exception:  # noqa: BLE001 - the record may not exist when the task never started
        error = None
    if error:
        return error
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__


def run_children(
    items: list[tuple[Hashable, dict[str, Any]]],
    *,
    limit: int | None,
    workers: int,
    open_job: Callable[[Hashable, dict[str, Any]], str],
    ray_name: Callable[[Hashable], str],
    on_start: Callable[[Hashable, str], None] | None = None,
    on_done: Callable[[Hashable, str, dict[str, Any] | None, str | None], None] | None = None,
) -> tuple[dict[Hashable, dict[str, Any]], dict[Hashable, str]]:
    """Run every ``(key, job spec)`` of ``items`` as a child job, in order, at most
    ``min(limit, worker_group_slots(workers))`` at once; return ``({key: result}, {key: error})``.

    ``open_job(key, spec)`` makes (or reopens) the child's record when it starts and returns its
    job id; ``on_start(key, job_id)`` and ``on_done(key, job_id, result, error)`` report progress.
    A failed child is recorded with its error and the others go on. Ray must be connected.
    """
    import ray

    @ray.remote(num_cpus=0, max_retries=0)
    def run_child(job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        from ldp.jobs.launch import run_job

        return run_job(job_id, spec=spec)

    cap = min(limit or 10**6, worker_group_slots(workers))
    queue = list(items)
    running: dict[Any, tuple[Hashable, str]] = {}
    done: dict[Hashable, dict[str, Any]] = {}
    failed: dict[Hashable, str] = {}
    env = {"env_vars": child_env()}
    while queue or running:
        while queue and len(running) < cap:
            key, spec = queue.pop(0)
            job_id = open_job(key, spec)
            ref = run_child.options(name=ray_name(key), runtime_env=env).remote(job_id, spec)
            running[ref] = (key, job_id)
            if on_start:
                on_start(key, job_id)
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            key, job_id = running.pop(ref)
            try:
                result = ray.get(ref)
            except Exception as exc:  # noqa: BLE001 - any child failure is reported, others go on
                failed[key] = child_error(job_id, exc)
                if on_done:
                    on_done(key, job_id, None, failed[key])
                continue
            done[key] = result
            if on_done:
                on_done(key, job_id, result, None)
    return done, failed
