"""The training loop: one plain process (Ray Train workers run the same loop).

A run is ``Trainer(...).train()``. The trainer knows nothing about diffusion or methods: it gets
a ``loss_fn(model, batch, generator) -> (loss, stats)``, a :class:`ResumableLoader` and the list of
parameters to train. What it owns:

- the optimiser step through a :class:`Backend` (plain torch here; DeepSpeed in ``ldp.jobs``),
  gradient accumulation, clipping, warm-up + cosine schedule;
- mixed precision (bf16 autocast for the forward, parameters and optimiser in fp32);
- periodic validation, a progress bar, a metrics log (``metrics.jsonl``, one JSON per step);
- checkpoints with exact resume: trainable weights, optimiser and scheduler, every RNG the loop
  draws from (the corruption generator and torch's global RNG), the loader position and the step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ldp.errors import LdpError
from ldp.training.loader import ResumableLoader
from ldp.training.optim import OptimConfig, build_optimizer

__all__ = [
    "LoopConfig",
    "Backend",
    "TorchBackend",
    "Trainer",
    "TrainResult",
    "LossFn",
    "latest_checkpoint",
    "write_checkpoint_atomically",
]

LossFn = Callable[[nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class LoopConfig:
    max_steps: int = 200
    """Optimiser steps to run (each of ``grad_accum`` micro-batches)."""
    batch_size: int = 16
    """Micro-batch size per process."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimiser step."""
    eval_every: int = 0
    """Validate every N steps (0: only at the end)."""
    eval_batches: int = 8
    """Validation batches per evaluation (0: the whole validation set)."""
    checkpoint_every: int = 0
    """Checkpoint every N steps (0: only at the end when an output folder is given)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep on disk."""
    log_every: int = 10
    """Progress-bar refresh and stdout log cadence (the metrics file gets every step)."""
    seed: int = 0
    """Seeds the data order, the corruption noise and torch's global RNG."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """bf16 runs the forward under CPU/GPU autocast; weights and optimiser stay fp32."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("eval_every", "eval_batches", "checkpoint_every", "log_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.keep_checkpoints < 1:
            raise ValueError("keep_checkpoints must be >= 1")


class Backend(Protocol):
    """How gradients become parameter updates (plain torch, or a DeepSpeed engine)."""

    def backward(self, loss: torch.Tensor) -> None: ...

    def step(self) -> dict[str, float]:
        """Clip, update, advance the schedule, zero the gradients; returns lr and grad_norm."""
        ...

    def save(self, folder: Path) -> None:
        """Write the trainable weights and optimiser/scheduler state into ``folder``.

        Called on every rank (DeepSpeed's checkpointing is collective)."""
        ...

    def load(self, folder: Path) -> None: ...


class TorchBackend:
    """AdamW + warm-up/cosine schedule on the given parameters, in this process."""

    def __init__(
        self, named_params: dict[str, nn.Parameter], optim: OptimConfig, total_steps: int
    ) -> None:
        if not named_params:
            raise ValueError("no trainable parameters")
        self.named_params = named_params
        self.params = list(named_params.values())
        self.grad_clip = optim.grad_clip
        self.optimizer, self.scheduler = build_optimizer(self.params, optim, total_steps)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> dict[str, float]:
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([p.grad.norm() for p in self.params if p.grad is not None])
            )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"lr": float(lr), "grad_norm": float(norm)}

    def save(self, folder: Path) -> None:
        save_file(
            {n: p.detach().contiguous().cpu() for n, p in self.named_params.items()},
            folder / "trainable.safetensors",
        )
        # Our own file object: torch.save given a path leaves it open when the write fails (a
        # full disk), and a deleted file that is still open keeps its space.
        with open(folder / "optimizer.pt", "wb") as f:
            torch.save(
                {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}, f
            )

    def load(self, folder: Path) -> None:
        weights = load_file(folder / "trainable.safetensors")
        missing = set(self.named_params) - set(weights)
        if missing:
            raise LdpError(
                f"checkpoint {folder} lacks {len(missing)} trainable tensors, e.g. {sorted(missing)[0]}"
            )
        with torch.no_grad():
            for name, param in self.named_params.items():
                param.copy_(weights[name])
        state = torch.load(folder / "optimizer.pt", weights_only=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])


@dataclass
class TrainResult:
    step: int
    train_loss: float
    """Mean loss of the last ``log_every`` steps."""
    val: dict[str, float] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    """Per-step metrics of this process's run (resumed runs hold only the steps they ran)."""
    seconds: float = 0.0


def write_checkpoint_atomically(trainer: "Trainer", folder: Path) -> Path:
    """:meth:`Trainer.save_checkpoint` into a hidden temporary folder beside ``folder``, then
    one rename: ``folder`` either holds a whole checkpoint or does not exist, whatever stops the
    write (a full disk, a kill). A failed write removes its temporary folder and raises
    :class:`LdpError` with one line; earlier checkpoints are untouched."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        trainer.save_checkpoint(tmp)
        if folder.exists():  # a step redone after a restart: the new write replaces it whole
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except Exception as exc:  # noqa: BLE001 - torch.save reports a full disk as a RuntimeError
        reason = _write_failure(exc, folder.parent)  # before the partial files free their space
        shutil.rmtree(tmp, ignore_errors=True)
        raise LdpError(f"could not write checkpoint {folder.name} into {folder.parent}: {reason}") from exc
    return folder


_FULL = 1 << 20
"""Less free space than this after a failed write: the disk is what failed."""


def _write_failure(exc: BaseException, folder: Path) -> str:
    """Why a checkpoint write failed, in a few words. A full disk does not always surface as
    ``ENOSPC`` (``torch.save`` raises ``RuntimeError: ... unexpected pos``), so the free space
    left on the target is read too."""
    import errno

    from ldp.errors import first_line

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return os.strerror(exc.errno)
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    if free is not None and free < _FULL:
        return f"{os.strerror(errno.ENOSPC)} ({free} bytes free; {first_line(exc, with_type=True)})"
    return first_line(exc, with_type=True)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete ``step_*`` checkpoint under ``folder`` (complete = has state json)."""
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.glob("step_*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


class Trainer:
    """Runs ``loop.max_steps`` optimiser steps of ``loss_fn`` over ``train_loader``."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_loader: ResumableLoader,
        *,
        loop: LoopConfig,
        optim: OptimConfig | None = None,
        trainable: list[nn.Parameter] | None = None,
        val_batches: Callable[[], Iterable[Any]] | None = None,
        out_dir: Path | None = None,
        backend: Backend | None = None,
        on_step: Callable[[dict[str, float]], None] | None = None,
        on_checkpoint: Callable[["Trainer", dict[str, float]], None] | None = None,
        progress: bool = True,
        is_main: bool = True,
        state_subdir: str | None = None,
    ) -> None:
        """``state_subdir``: where this process keeps its RNG and loader state inside a
        checkpoint folder (None: the folder itself). Data-parallel ranks other than 0 pass their
        own (``rank_1``, ...) so each rank's state sits beside the collective backend state."""
        self.model, self.loss_fn, self.loader = model, loss_fn, train_loader
        self.state_subdir = state_subdir
        self.loop = loop
        self.val_batches = val_batches
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.on_step = on_step
        self.on_checkpoint = on_checkpoint
        self.progress = progress and is_main
        self.is_main = is_main
        if trainable is None:
            trainable = [p for p in model.parameters() if p.requires_grad]
        self.trainable = trainable
        named = dict(zip(_names_of(model, trainable), trainable))
        self.backend = backend or TorchBackend(named, optim or OptimConfig(), loop.max_steps)
        self.step = 0
        torch.manual_seed(loop.seed)
        self.generator = torch.Generator().manual_seed(loop.seed)

    # -- one step ---------------------------------------------------------------------------
    def _autocast(self):
        if self.loop.precision == "bf16":
            device = next(self.model.parameters()).device.type
            return torch.autocast(device_type=device, dtype=torch.bfloat16)
        return nullcontext()

    def train_step(self) -> dict[str, float]:
        self.model.train()
        total, agg = 0.0, {}
        for _ in range(self.loop.grad_accum):
            batch = next(self.loader)
            with self._autocast():
                loss, stats = self.loss_fn(self.model, batch, self.generator)
            if not torch.isfinite(loss):
                raise LdpError(f"loss became {loss.item()} at step {self.step + 1}; lower the lr")
            self.backend.backward(loss / self.loop.grad_accum)
            total += float(loss.detach()) / self.loop.grad_accum
            for k, v in stats.items():
                agg[k] = agg.get(k, 0.0) + float(v) / self.loop.grad_accum
        info = self.backend.step()
        self.step += 1
        return {"step": self.step, "loss": total, **agg, **info}

    # -- validation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean validation loss with a fixed corruption seed (comparable across steps).

        ``val_loss`` is the denoising loss alone when the loss function reports it
        (``denoising_loss``): regularisers are training penalties, and counting them would rank
        runs with different regulariser weights by their penalty rather than by how well they
        denoise (a sweep over lambda stopped its small-lambda trials for that reason).
        ``val_objective`` keeps the full training objective when the two differ."""
        if self.val_batches is None:
            return {}
        self.model.eval()
        gen = torch.Generator().manual_seed(self.loop.seed + 12345)
        losses, objectives = [], []
        for i, batch in enumerate(self.val_batches()):
            if self.loop.eval_batches and i >= self.loop.eval_batches:
                break
            with self._autocast():
                loss, stats = self.loss_fn(self.model, batch, gen)
            objectives.append(float(loss))
            losses.append(float(stats.get("denoising_loss", loss)))
        self.model.train()
        if not losses:
            return {}
        out = {"val_loss": sum(losses) / len(losses)}
        if objectives != losses:
            out["val_objective"] = sum(objectives) / len(objectives)
        return out

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, folder: Path) -> Path:
        """Write everything exact resume needs into ``folder`` (``trainer_state.json`` last)."""
        folder.mkdir(parents=True, exist_ok=True)
        self.backend.save(folder)
        own = folder / self.state_subdir if self.state_subdir else folder
        own.mkdir(parents=True, exist_ok=True)
        save_file(
            {"generator": self.generator.get_state(), "torch_global": torch.get_rng_state()},
            own / "rng.safetensors",
        )
        state = {"step": self.step, "loader": self.loader.state_dict()}
        (own / "trainer_state.json").write_text(json.dumps(state))
        return folder

    def load_checkpoint(self, folder: Path) -> None:
        """Restore a :meth:`save_checkpoint` folder (weights, optimiser, RNGs, loader, step)."""
        own = folder / self.state_subdir if self.state_subdir else folder
        if not (own / "trainer_state.json").is_file():
            raise LdpError(
                f"checkpoint {folder} has no trainer state for this process ({own.name}); "
                "was it written with another number of workers?"
            )
        self.backend.load(folder)
        rng = load_file(own / "rng.safetensors")
        self.generator.set_state(rng["generator"])
        torch.set_rng_state(rng["torch_global"])
        state = json.loads((own / "trainer_state.json").read_text())
        self.step = int(state["step"])
        self.loader.load_state_dict(state["loader"])

    def _checkpoint(self, metrics: dict[str, float]) -> None:
        if self.on_checkpoint is not None:  # e.g. Ray Train: save on every rank, then report
            self.on_checkpoint(self, metrics)
            return
        if self.out_dir is None or not self.is_main:
            return
        ckpt_root = self.out_dir / "checkpoints"
        write_checkpoint_atomically(self, ckpt_root / f"step_{self.step:06d}")
        done = sorted(p for p in ckpt_root.glob("step_*") if (p / "trainer_state.json").is_file())
        for old in done[: -self.loop.keep_checkpoints]:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()

    # -- the run ----------------------------------------------------------------------------
    def train(self, resume_from: Path | None = None) -> TrainResult:
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        started = time.perf_counter()
        history: list[dict[str, float]] = []
        log_file = None
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            log_file = open(self.out_dir / "metrics.jsonl", "a")
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.loop.max_steps, initial=self.step, desc="train", unit="step")
        val: dict[str, float] = {}
        try:
            while self.step < self.loop.max_steps:
                metrics = self.train_step()
                last = self.step == self.loop.max_steps
                if (self.loop.eval_every and self.step % self.loop.eval_every == 0) or last:
                    val = self.evaluate()
                    metrics.update(val)
                history.append(metrics)
                if log_file is not None:
                    log_file.write(json.dumps(metrics) + "\n")
                    log_file.flush()
                if self.on_step is not None:
                    self.on_step(metrics)
                if bar is not None:
                    bar.update(1)
                    if self.step % max(1, self.loop.log_every) == 0 or last:
                        bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
                if (self.loop.checkpoint_every and self.step % self.loop.checkpoint_every == 0) or last:
                    self._checkpoint(metrics)
        finally:
            if bar is not None:
                bar.close()
            if log_file is not None:
                log_file.close()
        tail = history[-max(1, self.loop.log_every) :]
        train_loss = sum(m["loss"] for m in tail) / len(tail) if tail else math.nan
        return TrainResult(
            step=self.step,
            train_loss=train_loss,
            val=val,
            history=history,
            seconds=time.perf_counter() - started,
        )


def _names_of(model: nn.Module, params: list[nn.Parameter]) -> list[str]:
    by_id = {id(p): n for n, p in model.named_parameters()}
    names = []
    for i, p in enumerate(params):
        names.append(by_id.get(id(p), f"param_{i}"))
    return names
