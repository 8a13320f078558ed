"""The recipe protocol: what a distributed training job builds, independent of how it runs.

A recipe is referenced by an import path, ``"package.module:object"`` (or just
``"package.module"`` when the module itself defines the two functions). The object provides:

- ``build(config: dict, rank: int, world_size: int) -> Built`` — called once in every Ray Train
  worker. It must build the *same* model on every rank (seed the initialisation: DeepSpeed
  broadcasts rank 0's weights for ``ddp``/``zero2`` but ZeRO-3 partitions each rank's own copy)
  and a train loader sharded by ``rank``/``world_size``.
- ``export(built: Built, trainable_state: dict[str, Tensor], folder: Path) -> None`` — called on
  rank 0 only, after training, with the full (gathered) trainable weights keyed like
  ``Built.named_trainable``; writes the job's artifact (e.g. an adapter folder) into ``folder``.

The runner (:mod:`ldp.jobs.runner`) owns everything else: DeepSpeed, checkpoints, resume,
failures, reporting. The same recipe runs in one plain process through
:class:`ldp.training.trainer.Trainer` (see :func:`train_locally`), which is how recipes are
unit-tested without Ray.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from ldp.errors import UsageError
from ldp.training.loader import ResumableLoader
from ldp.training.optim import OptimConfig
from ldp.training.trainer import LoopConfig, LossFn
from torch import nn

__all__ = ["Built", "Recipe", "load_recipe", "train_locally"]


@dataclass
class Built:
    """Everything one worker trains, as a recipe's ``build`` returns it."""

    model: nn.Module
    """The whole model (frozen base included); identical on every rank."""
    named_trainable: dict[str, nn.Parameter]
    """The parameters to train, by their ``model.named_parameters()`` names (adapter only for
    adapter methods). Everything else in ``model`` stays frozen and is not checkpointed."""
    loss_fn: LossFn
    """``loss_fn(model, batch, generator) -> (loss, stats)`` as in :mod:`ldp.training.trainer`.
    It may call any method of ``model`` (``model.hidden_states``, ``model.head``, ...): under
    ZeRO-3 the runner makes partitioned parameters available for the whole call."""
    train_loader: ResumableLoader
    """This rank's shard (``rank=rank, world_size=world_size``), same seed on every rank."""
    loop: LoopConfig
    optim: OptimConfig
    val_batches: Callable[[], Iterable[Any]] | None = None
    """Validation batches (this rank's share, or all of them on every rank), or None."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Whatever ``export`` needs besides the weights (configs, tokenizer, base reference)."""

    def __post_init__(self) -> None:
        if not self.named_trainable:
            raise ValueError("a recipe must name at least one trainable parameter")
        owned = {id(p) for p in self.model.parameters()}
        stray = [n for n, p in self.named_trainable.items() if id(p) not in owned]
        if stray:
            raise ValueError(f"trainable parameter {stray[0]!r} is not a parameter of the model")
        frozen = [n for n, p in self.named_trainable.items() if not p.requires_grad]
        if frozen:
            raise ValueError(f"trainable parameter {frozen[0]!r} has requires_grad=False")


@runtime_checkable
class Recipe(Protocol):
    def build(self, config: dict[str, Any], rank: int, world_size: int) -> Built: ...

    def export(
        self, built: Built, trainable_state: dict[str, torch.Tensor], folder: Path
    ) -> None: ...


def load_recipe(ref: str) -> Recipe:
    """Import ``"module:object"`` (or ``"module"``) and check it has ``build`` and ``export``."""
    if not isinstance(ref, str) or not ref.strip():
        raise UsageError(f"a recipe is an import path 'module:object', got {ref!r}")
    module_name, _, attr = ref.strip().partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageError(f"recipe {ref!r}: cannot import {module_name!r} ({exc})") from exc
    obj: Any = module
    for part in attr.split(".") if attr else []:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f"recipe {ref!r}: {module_name} has no {attr!r}") from None
    static = (staticmethod, classmethod)
    if isinstance(obj, type) and not all(  # a class of static methods, or one to instantiate
        isinstance(obj.__dict__.get(n), static) for n in ("build", "export")
    ):
        obj = obj()
    missing = [n for n in ("build", "export") if not callable(getattr(obj, n, None))]
    if missing:
        raise UsageError(f"recipe {ref!r} lacks {' and '.join(missing)}()")
    return obj


def train_locally(recipe: Recipe | str, config: dict[str, Any], folder: Path, **trainer_kw: Any):
    """Run ``recipe`` in this process (rank 0 of 1, plain torch) and export into ``folder``.

    The reference the distributed runs are compared with; returns the ``TrainResult``."""
    from ldp.training.trainer import Trainer

    rec = load_recipe(recipe) if isinstance(recipe, str) else recipe
    built = rec.build(config, 0, 1)
    trainer = Trainer(
        built.model,
        built.loss_fn,
        built.train_loader,
        loop=built.loop,
        optim=built.optim,
        trainable=list(built.named_trainable.values()),
        val_batches=built.val_batches,
        progress=False,
        **trainer_kw,
    )
    result = trainer.train()
    folder.mkdir(parents=True, exist_ok=True)
    state = {n: p.detach().clone() for n, p in built.named_trainable.items()}
    rec.export(built, state, folder)
    return result
