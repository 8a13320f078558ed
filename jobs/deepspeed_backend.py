"""A DeepSpeed engine behind the trainer's :class:`~ldp.training.trainer.Backend` protocol.

Built inside each Ray Train worker, after ``torch.distributed`` is up (Ray's ``TorchTrainer``
starts it with gloo on CPU, NCCL on GPU; DeepSpeed adopts that process group).

Strategies (``ldp.cluster.deepspeed_config``): ``ddp`` (ZeRO stage 0), ``zero2``, ``zero3``,
``zero3-offload`` (optimizer states and parameters in host memory). The optimiser is ours:
:func:`ldp.training.optim.build_optimizer` (AdamW + warm-up/cosine), handed to
``deepspeed.initialize``, so every strategy and the single-process trainer follow one schedule.

How the trainer's loop maps onto the engine:

- **Forward through the engine.** The model is wrapped in :class:`LossModule`, whose ``forward``
  runs the recipe's ``loss_fn``; the trainer calls :attr:`DeepSpeedBackend.loss_fn`, which goes
  through ``engine(...)``. Under ZeRO-3 this matters: parameters are partitioned (empty) outside
  their module's own ``forward``, and a ``loss_fn`` that calls ``model.hidden_states`` and
  ``model.head`` (methods, not ``forward``) or reads a parameter directly (tied weights, a
  root-level ``nn.Parameter``) would see empty tensors. Inside ``engine.forward`` DeepSpeed marks
  every module as "in forward", and a partitioned parameter read then is gathered on the spot
  and registered as an external parameter of the wrapper (so it is also there for backward).
  Sub-modules called normally are gathered by their own hooks, as usual.
- **Device.** On GPUs the engine moves the model to its device; tensors of each batch (nested
  tuples, lists, dicts) are moved there before ``loss_fn`` runs. The loop's noise generator
  stays on the CPU: draw noise with it, then move the noise.
- **Gradient accumulation.** The trainer calls ``backward(loss / grad_accum)`` per micro-batch and
  ``step()`` once. The engine is configured with the same ``gradient_accumulation_steps``;
  ``backward`` does not rescale (``scale_wrt_gas=False``) and advances the engine's micro-step
  counter between micro-batches, so ZeRO reduces gradients at the boundary and ``step()``
  updates once.
- **Checkpoints** are DeepSpeed's own (``<folder>/deepspeed``), collective, every rank writing its
  shard; frozen parameters are excluded (the recipe rebuilds the base) and loading is non-strict.

The precision policy stays the trainer's: parameters and optimiser in fp32, the forward under
bf16 autocast when ``LoopConfig.precision == "bf16"``; DeepSpeed's own bf16/fp16 modes are off.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from ldp.config import deep_merge  # re-exported: the DeepSpeed config overrides merge with it
from ldp.errors import LdpError, UsageError
from ldp.training.optim import OptimConfig, build_optimizer
from ldp.training.trainer import LoopConfig, LossFn
from torch import nn

__all__ = ["STRATEGIES", "DeepSpeedBackend", "LossModule", "deep_merge"]

STRATEGIES = ("ddp", "zero2", "zero3", "zero3-offload")
_CKPT_DIR = "deepspeed"
_CKPT_TAG = "state"


class LossModule(nn.Module):
    """``forward(batch, generator) = loss_fn(model, batch, generator)``: the engine's module."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self._loss_fn = loss_fn

    def forward(self, batch: Any, generator: torch.Generator):
        return self._loss_fn(self.model, batch, generator)


def _to_device(batch: Any, device: torch.device) -> Any:
    """Tensors of a (nested) batch moved to ``device``; other values as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not hasattr(batch, "_fields"):
        return type(batch)(_to_device(v, device) for v in batch)
    if hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_to_device(v, device) for v in batch))
    return batch



class DeepSpeedBackend:
    """:class:`~ldp.training.trainer.Backend` over a DeepSpeed engine (see the module docstring).

    ``overrides`` is merged into the generated DeepSpeed config, e.g.
    ``{"zero_optimization": {"stage3_param_persistence_threshold": 0}}``.
    """

    def __init__(
        self,
        model: nn.Module,
        named_trainable: dict[str, nn.Parameter],
        loss_fn: LossFn,
        *,
        strategy: str,
        loop: LoopConfig,
        optim: OptimConfig,
        overrides: dict[str, Any] | None = None,
        on_gpu: bool = False,
    ) -> None:
        import deepspeed
        from ldp.cluster import deepspeed_config
        from ldp.jobs.op_build_lock import wait_for_op_builds

        if strategy not in STRATEGIES:
            raise UsageError(f"unknown strategy {strategy!r}; choose one of {'|'.join(STRATEGIES)}")
        if not named_trainable:
            raise ValueError("no trainable parameters")
        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.strategy = strategy
        self.model = model
        self.grad_accum = loop.grad_accum
        config = deepspeed_config(
            strategy,
            micro_batch=loop.batch_size,
            grad_accum=loop.grad_accum,
            grad_clip=optim.grad_clip,
            on_gpu=on_gpu,
        )
        self.config = deep_merge(config, overrides or {})
        if "optimizer" in self.config or "scheduler" in self.config:
            raise UsageError(
                "the DeepSpeed config must not set optimizer/scheduler: the trainer's AdamW and "
                "warm-up/cosine schedule (optim.*) are used for every strategy"
            )
        self.named_trainable = dict(named_trainable)
        params = list(named_trainable.values())
        optimizer, scheduler = build_optimizer(params, optim, loop.max_steps)
        self.wrapper = LossModule(model, loss_fn)
        # initialize() loads DeepSpeed's JIT-built ops; a lock left by a killed build would
        # make it wait forever
        wait_for_op_builds()
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.wrapper,
            model_parameters=params,
            optimizer=optimizer,
            lr_scheduler=scheduler,
            config=self.config,
        )
        self.stage = int(self.engine.zero_optimization_stage())
        self._pending = 0

    # -- the loss goes through the engine ----------------------------------------------------
    def loss_fn(self, model: nn.Module, batch: Any, generator: torch.Generator):
        """The trainer's ``loss_fn``: the recipe's, run inside ``engine.forward``."""
        if model is not self.model:
            raise ValueError("DeepSpeedBackend.loss_fn called with another model")
        self.wrapper.train(model.training)
        if self.engine.device.type != "cpu":
            batch = _to_device(batch, self.engine.device)
        return self.engine(batch, generator)

    # -- Backend ----------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        if self._pending and self._pending % self.grad_accum == 0:
            raise RuntimeError("more backward() calls than grad_accum before step()")
        if self._pending:  # close the previous micro-batch (no update off the boundary)
            self.engine.step()
        self.engine.backward(loss, scale_wrt_gas=False)
        self._pending += 1

    def step(self) -> dict[str, float]:
        if self._pending != self.grad_accum:
            raise RuntimeError(
                f"step() after {self._pending} backward() calls, expected {self.grad_accum}"
            )
        if not self.engine.is_gradient_accumulation_boundary():
            raise RuntimeError("DeepSpeed engine is not at a gradient accumulation boundary")
        lr = float(self.scheduler.get_last_lr()[0])
        own_norm = self._local_grad_norm() if self.stage == 0 else None
        self.engine.step()
        self._pending = 0
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            norm = own_norm if own_norm is not None else float("nan")
        return {"lr": lr, "grad_norm": float(norm)}

    def _local_grad_norm(self) -> float:
        """Stage 0: every rank holds the all-reduced gradients (reduced in the last backward)."""
        grads = [p.grad for p in self.named_trainable.values() if p.grad is not None]
        if not grads:
            return 0.0
        return float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))

    def save(self, folder: Path) -> None:
        """Collective: every rank writes its part into ``folder/deepspeed``."""
        ok = self.engine.save_checkpoint(
            str(Path(folder) / _CKPT_DIR), tag=_CKPT_TAG, exclude_frozen_parameters=True
        )
        if ok is False:
            raise LdpError(f"DeepSpeed could not save a checkpoint into {folder}")

    def load(self, folder: Path) -> None:
        """Collective: restore weights, optimiser and scheduler written by :meth:`save`."""
        path = Path(folder) / _CKPT_DIR
        if not (path / _CKPT_TAG).is_dir():
            raise LdpError(f"{folder} holds no DeepSpeed checkpoint ({_CKPT_DIR}/{_CKPT_TAG})")
        load_path, _ = self.engine.load_checkpoint(
            str(path),
            tag=_CKPT_TAG,
            load_module_strict=False,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
        )
        if load_path is None:
            raise LdpError(f"DeepSpeed could not load the checkpoint in {path}")

    # -- final weights ----------------------------------------------------------------------
    def consolidated_trainable_state(self) -> dict[str, torch.Tensor]:
        """The full trainable weights, keyed like ``named_trainable``, as fp32 CPU copies.

        Collective under ZeRO-3 (call it on every rank): the partitions are gathered layer by
        layer onto rank 0, which gets the full dict; the other ranks get ``{}``. Without ZeRO-3
        every rank holds the full parameters and gets the full dict.
        """
        if self.stage == 3:
            full = self.engine._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
            if full is None:  # not rank 0
                return {}
            by_name = {self._wrapper_name(n): n for n in self.named_trainable}
            out = {by_name[k]: v.detach().clone().float() for k, v in full.items() if k in by_name}
        else:
            out = {n: p.detach().cpu().clone().float() for n, p in self.named_trainable.items()}
        missing = set(self.named_trainable) - set(out)
        if missing:
            raise LdpError(f"gathering the trainable weights lost {min(missing)!r}")
        empty = [n for n, t in out.items() if t.numel() == 0]
        if empty:
            raise LdpError(f"gathered trainable weight {empty[0]!r} is empty")
        return out

    @staticmethod
    def _wrapper_name(name: str) -> str:
        return f"model.{name}"
