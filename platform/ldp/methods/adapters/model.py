"""Houlsby adapters attached by forward hooks on each block's attention and FFN sub-layers.

``base.block_parts().attention`` / ``.ffn`` name the modules whose output is the sub-layer's
output before the residual add (the base's ``BlockParts``); a forward hook replaces that output
``y`` by ``adapter(y) = y + W_up act(W_down y)``, which is where Houlsby et al. place them.
Tuple outputs get their first element replaced. The base is frozen; only the adapters train.
"""

from __future__ import annotations

import torch
from torch import nn

from ldp.errors import UsageError
from ldp.methods.adapters.config import AdaptersConfig
from ldp.methods.adapters.layer import BottleneckAdapter
from ldp.methods.base import AdaptedModel

__all__ = ["AdaptersModel", "attach"]


def _adapter_hook(adapter: BottleneckAdapter):
    def hook(module, args, output):
        if isinstance(output, tuple):
            return (adapter(output[0]), *output[1:])
        return adapter(output)

    return hook


class AdaptersModel(AdaptedModel):
    method_name = "adapters"
    peft_type = "HOULSBY_LDP"

    def __init__(self, base: nn.Module, config: AdaptersConfig, *, base_hash: str) -> None:
        super().__init__(base, config, base_hash=base_hash)
        for p in base.parameters():
            p.requires_grad_(False)
        device = next(base.parameters()).device
        parts = base.block_parts()
        self.layers = nn.ModuleList()
        self._hooks = []
        for index, block in enumerate(base.blocks()):
            per_block = nn.ModuleDict()
            for site in config.sites:
                name = getattr(parts, site)
                try:
                    target = block.get_submodule(name)
                except AttributeError:
                    raise UsageError(
                        f"adapters: block {index} has no {site} module {name!r}"
                    ) from None
                adapter = BottleneckAdapter(
                    base.hidden_size,
                    config.bottleneck,
                    activation=config.activation,
                    init_std=config.init_std,
                    device=device,
                )
                per_block[site] = adapter
                self._hooks.append(target.register_forward_hook(_adapter_hook(adapter)))
            self.layers.append(per_block)


    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for block in self.layers for a in block.values() for p in a.adapter_params()]

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.layers.named_parameters())

    def remove_hooks(self) -> None:
        """Detach the adapters from the base (the base then runs unmodified)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


def attach(base: nn.Module, config: AdaptersConfig, *, base_hash: str) -> AdaptersModel:
    return AdaptersModel(base, config, base_hash=base_hash)
