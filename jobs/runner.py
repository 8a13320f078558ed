"""Run a recipe as a Ray Train (V2) job with DeepSpeed: checkpoints, resume, failures, artifact.

:func:`run_training` builds a ``ray.train.torch.TorchTrainer`` whose workers each

1. build the recipe for their rank (:mod:`ldp.jobs.recipe`) and wrap it in a
   :class:`~ldp.jobs.deepspeed_backend.DeepSpeedBackend`;
2. resume from ``ray.train.get_checkpoint()`` when Ray hands one over (a restarted worker group,
   or a rerun with the same job id) through ``Trainer.load_checkpoint`` — weights, optimiser,
   schedule, RNGs, loader position and step, exactly;
3. run :class:`ldp.training.trainer.Trainer`; every ``checkpoint_every`` steps each rank saves
   its part (DeepSpeed shard + its own RNG/loader state in ``rank_<r>/``) into a temporary
   folder and calls ``ray.train.report(metrics, checkpoint=..., checkpoint_dir_name="step_N")``
   — a barrier; Ray merges the ranks' files into one checkpoint folder in storage;
4. at the end gathers the trainable weights (collective under ZeRO-3) and rank 0 calls the
   recipe's ``export`` into a folder reported as the last checkpoint (``artifact``), so
   ``Result.checkpoint`` *is* the artifact.

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

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ldp.errors import LdpError, UsageError
from ldp.paths import ldp_home

__all__ = [
    "ARTIFACT_DIR",
    "RunOutcome",
    "default_storage_path",
    "read_metrics",
    "run_training",
    "worker_error_line",
]

ARTIFACT_DIR = "artifact"
"""``checkpoint_dir_name`` of the final report: the recipe's exported artifact."""
_ARTIFACT_MARKER = "ldp_artifact.json"
_LAST_METRICS = "last_metrics.json"


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
    cpus_per_worker: float = 1,
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
    ``RunConfig`` (a sweep trial passes Tune's ``TuneReportCallback``). Connects to Ray
    (:func:`ldp.cluster.connect`) unless already connected, and refuses a job the cluster can
    never place. Raises :class:`LdpError` when training fails after ``max_failures`` restarts.
    """
    import ray
    import ray.train
    from ldp.cluster import check_fits, connect, parse_strategy, scaling_config
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
        fit = check_fits(num_workers, cpus_per_worker, gpus)
        if not fit.fits_now:
            print(f"[ldp] {fit.message}", flush=True)
        env = {"RAY_TRAIN_ENABLE_STATE_TRACKING": "1"}  # the dashboard's Train tab
        os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_TRACKING", "1")  # read by the driver
        if os.environ.get("TORCH_EXTENSIONS_DIR"):
            env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={
                "recipe": recipe,
                "config": config,
                "job_id": job_id,
                "strategy": strategy,
                "checkpoint_every": checkpoint_every,
                "deepspeed": deepspeed or {},
                "use_gpu": use_gpu,
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
    local = _is_local(ckpt.filesystem)
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


def _is_local(fs: Any) -> bool:
    import pyarrow.fs

    return isinstance(fs, pyarrow.fs.LocalFileSystem)


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


# ---------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------
class _MetricsLog:
    """Rank 0's metrics file (see the module docstring); every record also gets a timestamp."""

    def __init__(self, fs: Any, run_dir: str, attempt: str) -> None:
        self.fs = fs
        self.append = _is_local(fs)
        self.path = f"{run_dir}/metrics.jsonl"
        self.part = f"{run_dir}/metrics/{attempt}.jsonl"
        self.lines: list[str] = []

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps({**record, "time": round(time.time(), 3)})
        if self.append:
            with self.fs.open_append_stream(self.path) as f:
                f.write((line + "\n").encode())
        else:
            self.lines.append(line)

    def flush(self) -> None:
        if self.append or not self.lines:
            return
        self.fs.create_dir(self.part.rsplit("/", 1)[0])
        with self.fs.open_output_stream(self.part) as f:
            f.write(("\n".join(self.lines) + "\n").encode())


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in metrics.items():
        if v is None or isinstance(v, (bool, str, int)):
            out[k] = v
        else:
            f = float(v)
            out[k] = f if math.isfinite(f) else None
    return out


def _fmt(metrics: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
    )


_NOT_AVERAGED = frozenset({"step", "lr", "grad_norm"})


def _mean_over_ranks(metrics: dict[str, float], world: int) -> dict[str, float]:
    """Step metrics averaged over the data-parallel ranks (``lr``/``grad_norm`` are global).

    One small all-reduce per step; the recipe's stats must have the same keys on every rank."""
    if world == 1:
        return dict(metrics)
    import torch
    import torch.distributed as dist

    keys = sorted(k for k in metrics if k not in _NOT_AVERAGED)
    values = torch.tensor(
        [float(metrics[k]) for k in keys] + [float(len(keys))], dtype=torch.float64
    )
    dist.all_reduce(values)
    if int(values[-1]) != len(keys) * world:
        raise LdpError(f"ranks report different metrics at step {metrics.get('step')}: {keys}")
    means = (values[:-1] / world).tolist()
    return {**metrics, **dict(zip(keys, means))}


def _train_worker(cfg: dict[str, Any]) -> None:
    """``train_loop_per_worker``: runs in every Ray Train worker (see the module docstring)."""
    import ray.train
    import torch
    from ldp.jobs.deepspeed_backend import DeepSpeedBackend
    from ldp.jobs.recipe import load_recipe
    from ldp.training.trainer import Trainer
    from ray.train import Checkpoint

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    job_id, strategy = cfg["job_id"], cfg["strategy"]
    main = rank == 0

    def say(text: str) -> None:
        # Straight to stdout: Ray Train patches print() into a logger that also echoes it,
        # which would print every line twice in the job log.
        if main:
            sys.stdout.write(f"[ldp] {job_id}: {text}\n")
            sys.stdout.flush()

    warnings.filterwarnings(  # DeepSpeed calls these on every step; noise in the job log
        "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
    )

    recipe = load_recipe(cfg["recipe"])
    resume = ray.train.get_checkpoint()
    if resume is not None and Path(resume.path).name == ARTIFACT_DIR:
        # The run had finished (a rerun with the same job id): Result.checkpoint is the artifact.
        say("already finished (its artifact is the latest checkpoint)")
        return

    built = recipe.build(cfg["config"], rank, world)
    loop = dataclasses.replace(built.loop, checkpoint_every=int(cfg["checkpoint_every"]))
    backend = DeepSpeedBackend(
        built.model,
        built.named_trainable,
        built.loss_fn,
        strategy=strategy,
        loop=loop,
        optim=built.optim,
        overrides=cfg.get("deepspeed") or None,
        on_gpu=bool(cfg.get("use_gpu")),
    )

    storage = ctx.get_storage()
    log = (
        _MetricsLog(
            storage.storage_filesystem,
            storage.experiment_fs_path,
            f"attempt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        )
        if main
        else None
    )
    started = {"t": time.perf_counter(), "step": 0}
    last: dict[str, Any] = {}
    losses: list[float] = []  # this attempt's rank-mean losses (for train_loss)

    def on_step(local: dict[str, float]) -> None:
        metrics = _mean_over_ranks(local, world)  # collective: every rank runs on_step
        local.update(metrics)  # the trainer's history and checkpoint reports get the means
        last.clear()
        last.update(metrics)
        losses.append(float(metrics["loss"]))
        if log is None:
            return
        log.write(_plain(metrics))
        step = int(metrics["step"])
        if (
            step % max(1, loop.log_every) == 0
            or step == loop.max_steps
            or step == started["step"] + 1
        ):
            rate = (step - started["step"]) / max(1e-9, time.perf_counter() - started["t"])
            extra = "".join(f" {k}={metrics[k]:.4f}" for k in ("val_loss",) if k in metrics)
            say(
                f"step {step}/{loop.max_steps} loss={metrics['loss']:.4f}{extra} "
                f"lr={metrics['lr']:.2e} grad_norm={metrics['grad_norm']:.3f} ({rate:.2f} steps/s)"
            )

    def on_checkpoint(trainer: Trainer, metrics: dict[str, float]) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f"ldp-ckpt-r{rank}-"))
        try:
            trainer.save_checkpoint(tmp)
            if main:
                (tmp / _LAST_METRICS).write_text(json.dumps(_plain(metrics)))
            name = f"step_{trainer.step:06d}"
            ray.train.report(
                _plain(metrics),
                checkpoint=Checkpoint.from_directory(str(tmp)),
                checkpoint_dir_name=name,
            )
            # The report is a barrier, but Ray only *registers* the checkpoint when its
            # controller next polls the workers; a worker killed before that poll loses it
            # (then a restart would begin at step 0). Wait until it is committed.
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if log is not None:
            log.write({"event": "checkpoint", "step": trainer.step, "name": name})
            log.flush()
        say(f"checkpoint {name}")

    trainer = Trainer(
        built.model,
        backend.loss_fn,
        built.train_loader,
        loop=loop,
        trainable=list(built.named_trainable.values()),
        val_batches=built.val_batches,
        backend=backend,
        on_step=on_step,
        on_checkpoint=on_checkpoint,
        progress=False,
        is_main=main,
        state_subdir=None if main else f"rank_{rank}",
    )
    if rank:  # independent noise per rank (the data is sharded; the noise must not repeat)
        trainer.generator.manual_seed(loop.seed + 1_000_003 * rank)
        torch.manual_seed(loop.seed + 1_000_003 * rank)
    if resume is not None:
        with resume.as_directory() as d:
            trainer.load_checkpoint(Path(d))
            saved = Path(d) / _LAST_METRICS
            if saved.is_file():
                last.update(json.loads(saved.read_text()))
    started.update(t=time.perf_counter(), step=trainer.step)
    if log is not None:
        log.write(
            {"event": "start", "step": trainer.step, "world_size": world, "strategy": strategy}
        )
    say(
        f"{'resumed at' if trainer.step else 'starting'} step {trainer.step}/{loop.max_steps} "
        f"on {world} worker(s), strategy {strategy} (ZeRO stage {backend.stage})"
    )

    trainer.train()
    state = backend.consolidated_trainable_state()  # collective under ZeRO-3
    final: dict[str, Any] = {k: v for k, v in last.items() if k != "step"}
    final["step"] = trainer.step
    if losses:
        tail = losses[-max(1, loop.log_every) :]
        final["train_loss"] = sum(tail) / len(tail)
    final = _plain(final)
    if log is not None:
        log.write({"event": "end", "step": trainer.step})
        log.flush()

    if main:
        out = Path(tempfile.mkdtemp(prefix="ldp-artifact-"))
        try:
            recipe.export(built, state, out)
            (out / _ARTIFACT_MARKER).write_text(
                json.dumps({"job_id": job_id, "step": trainer.step, "metrics": final})
            )
            ray.train.report(
                final,
                checkpoint=Checkpoint.from_directory(str(out)),
                checkpoint_dir_name=ARTIFACT_DIR,
            )
        finally:
            shutil.rmtree(out, ignore_errors=True)
        say(f"done at step {trainer.step}: " + _fmt(final))
    else:
        ray.train.report(final, checkpoint=None)
    sys.stdout.flush()
