"""A resumable, shardable batch loader.

The order of examples is a pure function of ``(seed, epoch)``, and the loader's whole state is
``(epoch, position)``: saving those two integers in a checkpoint and restoring them gives exactly
the batches an uninterrupted run would have seen. Under data parallelism each rank takes every
``world_size``-th index of the same permutation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["ResumableLoader"]


class ResumableLoader:
    """Endless iterator of collated batches over ``dataset`` (reshuffled every epoch).

    ``dataset[i]`` returns one example; ``collate(list_of_examples) -> batch``.
    """

    def __init__(
        self,
        dataset: Sequence[Any],
        batch_size: int,
        collate: Callable[[list[Any]], Any],
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if batch_size <= 0:
            raise ValueError("batch_size must be > 0")
        n_local = len(range(rank, len(dataset), world_size))
        if n_local < batch_size and drop_last:
            raise ValueError(
                f"{len(dataset)} examples are too few for batch size {batch_size} x {world_size} ranks"
            )
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.drop_last = drop_last
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None

    def _epoch_order(self) -> list[int]:
        if self._order is None:
            n = len(self.dataset)
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                perm = torch.randperm(n, generator=g).tolist()
            else:
                perm = list(range(n))
            self._order = perm[self.rank :: self.world_size]
        return self._order

    def __iter__(self) -> "ResumableLoader":
        return self

    def __next__(self) -> Any:
        order = self._epoch_order()
        end = self.position + self.batch_size
        if end > len(order) and (self.drop_last or self.position >= len(order)):
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
            return next(self)
        idx = order[self.position : end]
        self.position = min(end, len(order))
        return self.collate([self.dataset[i] for i in idx])

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
        self._order = None
