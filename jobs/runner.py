"""Run a recipe as a Ray Train (V2) job with DeepSpeed: checkpoints, resume, failures, artifact.

The driver side of a job. :func:`run_training` builds a ``ray.train.torch.TorchTrainer`` whose
workers each run :func:`ldp.jobs.worker.train_worker` (build the recipe for their rank, resume
from the checkpoint Ray hands over, train with a checkpoint every ``checkpoint_every`` steps,
export the artifact). The last checkpoint reported is the recipe's exported artifact (named
``artifact``), so ``Result.checkpoint`` *is* the artifact.

Per-step metrics: rank 0 appends one JSON line per step to ``<storage>/<job_id>/metrics.jsonl``
(plus ``{"event": "start"|"checkpoint"|"end", ...}`` lines), and prints a progress line every
``loop.log_every`` steps to the job log. On storage that cannot append (S3), each attempt writes
``metrics/<attempt>.jsonl`` at every checkpoint and at the end instead. :func:`read_metrics`
reads either back.

Failures: ``FailureConfig(max_failures)`` restarts the whole worker group from the last
checkpoint (at most ``checkpoint_every`` steps are redone). A failed ``fit()`` becomes an
:class:`~ldp.errors.LdpError` carrying the first line of the worker's error. The same
``job_id`` + storage resumes a finished or interrupted run (Ray Train V2 has no
``Trainer.restore``); give every new job a new id.

Resuming needs the same number of workers and the same strategy (DeepSpeed's ZeRO shards are
per rank).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldp.errors import LdpError, UsageError
from ldp.jobs.worker import ARTIFACT_DIR, is_local_fs, train_worker
from ldp.paths import ldp_home

__all__ = [
    "ARTIFACT_DIR",
    "RunOutcome",
    "default_storage_path",
    "read_metrics",
    "run_training",
    "worker_error_line",
]



@dataclass
class RunOutcome:
    """What a finished :func:`run_training` returns."""

    artifact_dir: Path
    """The exported artifact on this machine (the storage folder itself for local storage,
    a download otherwise)."""
    metrics: dict[str, Any]
    """Final metrics: ``step``, ``loss`` (last step), ``train_loss`` (mean of the last
    ``log_every`` steps), ``val_loss`` and the recipe's validation stats when it has any."""
    checkpoint_path: str
    """Where the artifact checkpoint lives in storage (``Result.checkpoint.path``)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Per-step metrics of the whole run, one per step (redone steps: the last run of them)."""
    run_path: str = ""
    """The run's folder in storage (``<storage_path>/<job_id>``)."""


HEALTH_CHECK_INTERVAL_S = 0.25
"""The Ray Train controller's poll interval for LDP jobs (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``
overrides it)."""


def default_storage_path() -> Path:
    """``LDP_HOME/runs``: where runs keep checkpoints unless a job says otherwise."""
    return ldp_home() / "runs"


# ---------------------------------------------------------------------------------------------
# Driver side
# ---------------------------------------------------------------------------------------------
def run_training(
    recipe: str,
    config: dict[str, Any],
    *,
    job_id: str,
    num_workers: int,
    strategy: str,
    storage_path: str,
    storage_filesystem: Any = None,
    checkpoint_every: int,
    max_failures: int = 2,
    use_gpu: bool = False,
    cpus_per_worker: float | None = 1,
    deepspeed: dict[str, Any] | None = None,
    artifact_dir: Path | None = None,
    callbacks: list[Any] | None = None,
) -> RunOutcome:
    """Train ``recipe`` (``"module:object"``) with ``config`` on ``num_workers`` Ray Train workers.

    ``strategy``: ``ddp|zero2|zero3|zero3-offload`` (``auto`` means ``ddp`` on CPU; resolve it
    with :func:`ldp.cluster.choose_strategy` for GPUs). ``deepspeed`` is merged into the
    generated DeepSpeed config (e.g. ``{"zero_optimization":
    {"stage3_param_persistence_threshold": 0}}``). ``storage_path`` (+ ``storage_filesystem``,
    a ``pyarrow.fs.FileSystem``) holds ``<job_id>/step_*``, ``<job_id>/artifact`` and the
    metrics; ``artifact_dir`` is where a non-local artifact is downloaded to (default: a new
    temporary folder). ``callbacks``: extra Ray Train ``UserCallback`` objects for the run's
    ``RunConfig`` (a sweep trial passes Tune's ``TuneReportCallback``). ``cpus_per_worker``
    None: as many as :func:`ldp.cluster.cpus_per_worker_for` gives (every core of a one-node
    cluster, shared among the workers). Connects to Ray
    (:func:`ldp.cluster.connect`) unless already connected, and refuses a job the cluster can
    never place. Raises :class:`LdpError` when training fails after ``max_failures`` restarts.
    """
    import ray
    import ray.train
    from ldp.cluster import check_fits, cluster_resources, connect, cpus_per_worker_for, parse_strategy, scaling_config
    from ldp.jobs.children import child_env
    from ldp.jobs.recipe import load_recipe
    from ray.train.torch import TorchTrainer

    strategy = parse_strategy(strategy)
    if strategy == "auto":
        if use_gpu:
            raise UsageError(
                "resolve --strategy auto with ldp.cluster.choose_strategy before run_training"
            )
        strategy = "ddp"  # CPU workers over gloo: ZeRO only saves GPU memory
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise UsageError(f"checkpoint_every must be an integer >= 1, got {checkpoint_every!r}")
    if max_failures < 0:
        raise UsageError(f"max_failures must be >= 0, got {max_failures}")
    if not job_id or "/" in job_id:
        raise UsageError(f"invalid job id {job_id!r}")
    if storage_filesystem is None and "://" not in str(storage_path):
        storage_path = os.path.abspath(os.path.expanduser(str(storage_path)))
    load_recipe(recipe)  # fail here, not in every worker, when it cannot be imported
    json.dumps(config)  # the config travels to the workers and into records: plain data only

    handle = None if ray.is_initialized() else connect()
    try:
        gpus = 1 if use_gpu else 0
        if cpus_per_worker is None:
            cpus_per_worker = cpus_per_worker_for(num_workers, cluster_resources(), use_gpu)
        fit = check_fits(num_workers, cpus_per_worker, gpus)
        if not fit.fits_now:
            print(f"[ldp] {fit.message}", flush=True)
        # The workers resolve the defaults (registry, data mirror, caches, the DeepSpeed op's
        # build folder) as this driver does: a head started from another shell has other
        # environment variables, and an adapter trained on that registry's base would not load
        # onto the one this driver evaluates.
        env = {**child_env(), "RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}  # + the dashboard's Train tab
        os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # read by the driver
        # How often the controller polls the workers (Ray's default 2 s; Ray Train passes it
        # from the driver to the controller). A reported checkpoint is committed, and a finished
        # run noticed, only at a poll: at 2 s every short job waited ~5 s on polls alone.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", str(HEALTH_CHECK_INTERVAL_S))
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={
                "recipe": recipe,
                "config": config,
                "job_id": job_id,
                "strategy": strategy,
                "checkpoint_every": checkpoint_every,
                "deepspeed": deepspeed or {},
                "use_gpu": use_gpu,
                "threads": int(cpus_per_worker),
            },
            scaling_config=scaling_config(num_workers, use_gpu, cpus_per_worker),
            run_config=ray.train.RunConfig(
                name=job_id,
                storage_path=str(storage_path),
                storage_filesystem=storage_filesystem,
                failure_config=ray.train.FailureConfig(
                    max_failures=max_failures, controller_failure_limit=3
                ),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                worker_runtime_env={"env_vars": env},
                callbacks=list(callbacks or []),
            ),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            raise LdpError(f"training job {job_id} failed: {worker_error_line(exc)}") from exc
    finally:
        if handle is not None:
            handle.shutdown()

    ckpt = result.checkpoint
    if ckpt is None or Path(ckpt.path).name != ARTIFACT_DIR:
        raise LdpError(f"training job {job_id} finished without reporting its artifact")
    local = is_local_fs(ckpt.filesystem)
    if local:
        out_dir = Path(ckpt.path)
    else:
        out_dir = Path(artifact_dir or tempfile.mkdtemp(prefix=f"ldp-{job_id}-"))
        ckpt.to_directory(str(out_dir))
    history = read_metrics(storage_path, job_id, storage_filesystem=storage_filesystem)
    return RunOutcome(
        artifact_dir=out_dir,
        metrics=dict(result.metrics or {}),
        checkpoint_path=ckpt.path,
        history=_dedupe_steps(history),
        run_path=str(result.path),
    )


def worker_error_line(exc: BaseException) -> str:
    """One line saying why a Ray Train run failed: the most telling worker's own error.

    When one rank fails, its peers usually fail too, inside a collective ("Connection reset by
    peer"), or are reported dead by Ray; the rank with a plain error of its own is preferred."""
    failures = getattr(exc, "worker_failures", None) or {}
    if failures:
        rank = min(failures, key=lambda r: (_symptom_rank(failures[r]), r))
        return f"rank {rank}: {_one_line(failures[rank])}"
    inner = getattr(exc, "controller_failure", None)
    return _one_line(inner if inner is not None else exc)


_COLLECTIVE_HINTS = ("gloo", "nccl", "connection reset by peer", "connection closed by peer")


def _symptom_rank(err: BaseException) -> int:
    base = getattr(err, "_base_exc", None) or err
    if type(base).__module__.startswith("ray."):
        return 2  # ActorDiedError and friends: the process vanished
    if any(h in str(base).lower() for h in _COLLECTIVE_HINTS):
        return 1  # a peer's failure seen through a collective
    return 0


def _one_line(err: BaseException) -> str:
    base = getattr(err, "_base_exc", None) or err  # Ray Train's UserExceptionWithTraceback
    text = str(base).strip()
    first = text.splitlines()[0].strip() if text else ""
    if isinstance(base, LdpError):
        return first or type(base).__name__
    return f"{type(base).__name__}: {first}" if first else type(base).__name__


def _fs_and_path(storage_path: str, storage_filesystem: Any = None) -> tuple[Any, str]:
    import pyarrow.fs

    if storage_filesystem is not None:
        return storage_filesystem, str(storage_path)
    text = str(storage_path)
    if "://" in text and not text.startswith("file://"):
        return pyarrow.fs.FileSystem.from_uri(text)
    text = text.removeprefix("file://")
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))


def read_metrics(
    storage_path: str, job_id: str, *, storage_filesystem: Any = None
) -> list[dict[str, Any]]:
    """Every metrics record of run ``job_id`` in order, events included (see module doc)."""
    import pyarrow.fs

    fs, root = _fs_and_path(storage_path, storage_filesystem)
    run = f"{root.rstrip('/')}/{job_id}"
    paths = []
    if fs.get_file_info(f"{run}/metrics.jsonl").type == pyarrow.fs.FileType.File:
        paths.append(f"{run}/metrics.jsonl")
    parts = fs.get_file_info(pyarrow.fs.FileSelector(f"{run}/metrics", allow_not_found=True))
    paths += sorted(p.path for p in parts if p.path.endswith(".jsonl"))
    records = []
    for path in paths:
        with fs.open_input_stream(path) as f:
            for line in f.read().decode().splitlines():
                if line.strip():
                    records.append(json.loads(line))
    return records


def _dedupe_steps(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_step: dict[int, dict[str, Any]] = {}
    for r in records:
        if "event" not in r and "step" in r:
            by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]
