"""What runs inside every Ray Train worker of an LDP job (``train_loop_per_worker``).

:func:`train_worker` is the whole life of one rank:

1. build the recipe for this rank and wrap it in a
   :class:`~ldp.jobs.deepspeed_backend.DeepSpeedBackend`;
2. resume from ``ray.train.get_checkpoint()`` when Ray hands one over (a restarted worker group,
   or a rerun with the same job id), exactly: weights, optimiser, schedule, RNGs, loader
   position and step;
3. train; every ``checkpoint_every`` steps each rank saves its part into a temporary folder and
   reports it (:class:`_Progress.on_checkpoint`), a barrier after which Ray holds one merged
   checkpoint folder;
4. gather the trainable weights (a collective under ZeRO-3); rank 0 exports the recipe's artifact
   and reports it as the last checkpoint, named :data:`ARTIFACT_DIR`.

Rank 0 also keeps the job's metrics file (:class:`MetricsLog`) and prints its progress lines.
The driver side (starting the job, reading its outcome) is :mod:`ldp.jobs.runner`.
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
from pathlib import Path
from typing import Any

from ldp.errors import LdpError

__all__ = ["ARTIFACT_DIR", "MetricsLog", "is_local_fs", "train_worker"]

ARTIFACT_DIR = "artifact"
"""``checkpoint_dir_name`` of the final report: the recipe's exported artifact."""
_ARTIFACT_MARKER = "ldp_artifact.json"
_LAST_METRICS = "last_metrics.json"
"""Rank 0's last step metrics, kept in each checkpoint so that a resumed run that ends at once
still reports them."""
_NOT_AVERAGED = frozenset({"step", "lr", "grad_norm"})


def is_local_fs(fs: Any) -> bool:
    import pyarrow.fs

    return isinstance(fs, pyarrow.fs.LocalFileSystem)


class MetricsLog:
    """Rank 0's metrics file: one JSON line per step plus ``start``/``checkpoint``/``end``
    events, each with a timestamp. Appended to ``<run_dir>/metrics.jsonl`` where the storage
    can append (local disk); elsewhere (S3) each attempt rewrites ``metrics/<attempt>.jsonl``
    at every :meth:`flush`."""

    def __init__(self, fs: Any, run_dir: str, attempt: str) -> None:
        self.fs = fs
        self.append = is_local_fs(fs)
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


def plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics as JSON-safe scalars (tensors and numpy numbers to float, non-finite to None)."""
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


def mean_over_ranks(metrics: dict[str, float], world: int) -> dict[str, float]:
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


class _Progress:
    """One rank's view of its run: the trainer's ``on_step`` / ``on_checkpoint`` hooks, the
    progress lines and metrics file (rank 0 only), and the final metrics."""

    def __init__(self, job_id: str, rank: int, world: int, loop: Any) -> None:
        import ray.train

        self.job_id, self.rank, self.world, self.loop = job_id, rank, world, loop
        self.main = rank == 0
        storage = ray.train.get_context().get_storage()
        self.log = (
            MetricsLog(storage.storage_filesystem, storage.experiment_fs_path,
                       f"attempt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
            if self.main else None
        )
        self.started_at, self.started_step = time.perf_counter(), 0
        self.last: dict[str, Any] = {}
        self.losses: list[float] = []  # this attempt's rank-mean losses (for train_loss)

    def say(self, text: str) -> None:
        # Straight to stdout: Ray Train patches print() into a logger that also echoes it,
        # which would print every line twice in the job log.
        if self.main:
            sys.stdout.write(f"[ldp] {self.job_id}: {text}\n")
            sys.stdout.flush()

    def start(self, step: int, strategy: str, stage: int) -> None:
        self.started_at, self.started_step = time.perf_counter(), step
        if self.log is not None:
            self.log.write({"event": "start", "step": step, "world_size": self.world, "strategy": strategy})
        self.say(
            f"{'resumed at' if step else 'starting'} step {step}/{self.loop.max_steps} "
            f"on {self.world} worker(s), strategy {strategy} (ZeRO stage {stage})"
        )

    def resume_metrics(self, checkpoint_dir: Path) -> None:
        saved = checkpoint_dir / _LAST_METRICS
        if saved.is_file():
            self.last.update(json.loads(saved.read_text()))

    def on_step(self, local: dict[str, float]) -> None:
        metrics = mean_over_ranks(local, self.world)  # collective: every rank runs on_step
        local.update(metrics)  # the trainer's history and checkpoint reports get the means
        self.last.clear()
        self.last.update(metrics)
        self.losses.append(float(metrics["loss"]))
        if self.log is None:
            return
        self.log.write(plain(metrics))
        step, loop = int(metrics["step"]), self.loop
        if step % max(1, loop.log_every) == 0 or step == loop.max_steps or step == self.started_step + 1:
            rate = (step - self.started_step) / max(1e-9, time.perf_counter() - self.started_at)
            # The answer's own tokens apart: EOS padding can make the loss small while the answer
            # is not learned at all.
            extra = "".join(f" {k}={metrics[k]:.4f}" for k in ("nll_answer", "val_loss") if k in metrics)
            self.say(
                f"step {step}/{loop.max_steps} loss={metrics['loss']:.4f}{extra} "
                f"lr={metrics['lr']:.2e} grad_norm={metrics['grad_norm']:.3f} ({rate:.2f} steps/s)"
            )

    def on_checkpoint(self, trainer: Any, metrics: dict[str, float]) -> None:
        import ray.train
        from ray.train import Checkpoint

        tmp = Path(tempfile.mkdtemp(prefix=f"ldp-ckpt-r{self.rank}-"))
        name = f"step_{trainer.step:06d}"
        try:
            trainer.save_checkpoint(tmp)
            if self.main:
                (tmp / _LAST_METRICS).write_text(json.dumps(plain(metrics)))
            ray.train.report(plain(metrics), checkpoint=Checkpoint.from_directory(str(tmp)),
                             checkpoint_dir_name=name)
            # The report is a barrier, but Ray only *registers* the checkpoint when its
            # controller next polls the workers; a worker killed before that poll loses it
            # (then a restart would begin at step 0). Wait until it is committed.
            ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED
            )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.log is not None:
            self.log.write({"event": "checkpoint", "step": trainer.step, "name": name})
            self.log.flush()
        self.say(f"checkpoint {name}")

    def finish(self, step: int) -> dict[str, Any]:
        """The run's final metrics: the last step's (rank means), ``step``, and ``train_loss``
        (the mean loss over the last ``log_every`` steps of this attempt)."""
        final: dict[str, Any] = {k: v for k, v in self.last.items() if k != "step"}
        final["step"] = step
        # This attempt's training loop alone (not the start-up, the export or evaluation): what
        # a job's overhead is measured against.
        final["loop_seconds"] = round(time.perf_counter() - self.started_at, 3)
        if self.losses:
            tail = self.losses[-max(1, self.loop.log_every):]
            final["train_loss"] = sum(tail) / len(tail)
        if self.log is not None:
            self.log.write({"event": "end", "step": step})
            self.log.flush()
        return plain(final)


def _report_artifact(recipe: Any, built: Any, state: dict[str, Any], final: dict[str, Any],
                     step: int, progress: _Progress) -> None:
    """Rank 0 exports the artifact and reports it as the last checkpoint; the other ranks
    report their final metrics only (every rank must report: it is a barrier)."""
    import ray.train
    from ray.train import Checkpoint

    if not progress.main:
        ray.train.report(final, checkpoint=None)
        return
    out = Path(tempfile.mkdtemp(prefix="ldp-artifact-"))
    try:
        recipe.export(built, state, out)
        (out / _ARTIFACT_MARKER).write_text(
            json.dumps({"job_id": progress.job_id, "step": step, "metrics": final})
        )
        ray.train.report(final, checkpoint=Checkpoint.from_directory(str(out)),
                         checkpoint_dir_name=ARTIFACT_DIR)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    progress.say(f"done at step {step}: " + _fmt(final))


def train_worker(cfg: dict[str, Any]) -> None:
    """``train_loop_per_worker`` (see the module docstring); ``cfg`` is what
    :func:`ldp.jobs.runner.run_training` passes: recipe, config, job id, strategy,
    ``checkpoint_every``, DeepSpeed overrides, ``use_gpu``, ``threads`` (the worker's CPUs)."""
    import ray.train
    import torch
    from ldp.jobs.deepspeed_backend import DeepSpeedBackend
    from ldp.jobs.recipe import load_recipe
    from ldp.training.trainer import Trainer

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    strategy = cfg["strategy"]
    # Ray starts a Train worker with one intra-op thread whatever CPUs its bundle holds.
    torch.set_num_threads(max(1, int(cfg.get("threads", 1))))
    warnings.filterwarnings(  # DeepSpeed calls these on every step; noise in the job log
        "ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning
    )

    recipe = load_recipe(cfg["recipe"])
    resume = ray.train.get_checkpoint()
    if resume is not None and Path(resume.path).name == ARTIFACT_DIR:
        # The run had finished (a rerun with the same job id): Result.checkpoint is the artifact.
        if rank == 0:
            sys.stdout.write(f"[ldp] {cfg['job_id']}: already finished (its artifact is the latest checkpoint)\n")
            sys.stdout.flush()
        return

    built = recipe.build(cfg["config"], rank, world)
    loop = dataclasses.replace(built.loop, checkpoint_every=int(cfg["checkpoint_every"]))
    backend = DeepSpeedBackend(
        built.model, built.named_trainable, built.loss_fn, strategy=strategy, loop=loop,
        optim=built.optim, overrides=cfg.get("deepspeed") or None, on_gpu=bool(cfg.get("use_gpu")),
    )
    progress = _Progress(cfg["job_id"], rank, world, loop)
    trainer = Trainer(
        built.model, backend.loss_fn, built.train_loader, loop=loop,
        trainable=list(built.named_trainable.values()), val_batches=built.val_batches,
        backend=backend, on_step=progress.on_step, on_checkpoint=progress.on_checkpoint,
        progress=False, is_main=progress.main, state_subdir=None if progress.main else f"rank_{rank}",
    )
    if rank:  # independent noise per rank (the data is sharded; the noise must not repeat)
        trainer.generator.manual_seed(loop.seed + 1_000_003 * rank)
        torch.manual_seed(loop.seed + 1_000_003 * rank)
    if resume is not None:
        with resume.as_directory() as d:
            trainer.load_checkpoint(Path(d))
            progress.resume_metrics(Path(d))
    progress.start(trainer.step, strategy, backend.stage)

    trainer.train()
    state = backend.consolidated_trainable_state()  # collective under ZeRO-3
    final = progress.finish(trainer.step)
    _report_artifact(recipe, built, state, final, trainer.step, progress)
    sys.stdout.flush()
