"""Left padding of prompts for batched generation and scoring."""

from __future__ import annotations

import torch

__all__ = ["pad_left"]


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad to a common length: ids (B, L) long and a keep mask (B, L) bool.

    The padding is never attended to, and the backbones number positions over attended tokens
    only, so a row's result does not depend on how much padding its batch mates forced on it.
    """
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    keep = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = torch.tensor(s, dtype=torch.long)
        keep[i, width - len(s):] = True
    return ids, keep
