"""BitFit (Ben Zaken et al., 2022): train the bias vectors of the base, freeze everything else.

The biases are asked of the modules: every submodule's own ``bias`` parameter (``nn.Linear``,
``nn.LayerNorm``, convolution, ... and any custom module declaring one), found by walking modules
with ``recurse=False``, never by matching names across the parameter tree. The native backbone
keeps its bias terms so that this is meaningful.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ldp.errors import UsageError
from ldp.methods.base import AdaptedModel

__all__ = ["BitFitConfig", "BitFitModel", "attach", "bias_parameters"]


@dataclass
class BitFitConfig:
    include_norms: bool = True
    """Also train the bias (beta) of normalisation layers; False: only linear-layer biases."""


def bias_parameters(root: nn.Module, *, include_norms: bool = True) -> dict[str, nn.Parameter]:
    """``qualified name -> bias`` for each submodule's own bias parameter (tied ones once)."""
    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for name, module in root.named_modules():
        if not include_norms and isinstance(module, norm_types):
            continue
        bias = module._parameters.get("bias")
        if isinstance(bias, nn.Parameter) and id(bias) not in seen:
            seen.add(id(bias))
            out[f"{name}.bias" if name else "bias"] = bias
    return out


class BitFitModel(AdaptedModel):
    method_name = "bitfit"
    peft_type = "BITFIT_LDP"

    def __init__(self, base: nn.Module, config: BitFitConfig, *, base_hash: str) -> None:
        super().__init__(base, config, base_hash=base_hash)
        self._biases = bias_parameters(base, include_norms=config.include_norms)
        if not self._biases:
            raise UsageError("bitfit: the base has no bias terms to train")
        for p in base.parameters():
            p.requires_grad_(False)
        for p in self._biases.values():
            p.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self._biases.values())

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self._biases)


def attach(base: nn.Module, config: BitFitConfig, *, base_hash: str) -> BitFitModel:
    return BitFitModel(base, config, base_hash=base_hash)
