"""Full fine-tuning: the "adapter" is the whole base (its ``state_dict``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ldp.methods.base import AdaptedModel

__all__ = ["FullConfig", "FullModel", "attach"]


@dataclass
class FullConfig:
    """Full fine-tuning has no options; the section exists so every method has a config."""


class FullModel(AdaptedModel):
    """Every parameter of the base trains; saving writes all of its weights."""

    method_name = "full"
    peft_type = "FULL_LDP"

    def __init__(self, base: nn.Module, config: FullConfig, *, base_hash: str) -> None:
        super().__init__(base, config, base_hash=base_hash)
        for p in base.parameters():
            p.requires_grad_(True)


    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.base.parameters())  # tied weights once

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.base.state_dict(keep_vars=True))


def attach(base: nn.Module, config: FullConfig, *, base_hash: str) -> FullModel:
    return FullModel(base, config, base_hash=base_hash)
