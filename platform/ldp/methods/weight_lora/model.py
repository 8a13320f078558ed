"""Weight LoRA through ``peft``: ``W x + (alpha / r) B A x`` on every block's q, k, v, o (and,
when asked, the feed-forward's up and down projections).

Target modules are given to peft as exact qualified names built from ``base.blocks()`` and
``base.block_parts()``; after injection every intended name must be a peft ``LoraLayer``, else
attaching fails (``UsageError``) instead of training a silent partial match. Artifacts are written
by peft's own ``save_pretrained`` (``peft_type: LORA``) plus LDP's keys (``ldp_method``,
``ldp_config``, ``base_hash``) in the same ``adapter_config.json``, so
``peft.PeftModel.from_pretrained(base, folder)`` loads them (peft ignores the extra keys with a
warning).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ldp.errors import UsageError
from ldp.methods.base import ADAPTER_CONFIG_NAME, AdaptedModel, module_paths
from ldp.methods.weight_lora.config import WeightLoraConfig

__all__ = ["WeightLoraModel", "attach", "load", "target_names"]

ADAPTER_NAME = "default"


def target_names(base: nn.Module, targets: list[str]) -> list[str]:
    """Qualified names (relative to ``base``) of every block's target projections."""
    paths = module_paths(base)
    parts = base.block_parts()
    names = []
    for block in base.blocks():
        prefix = paths[id(block)]
        for target in targets:
            names.append(f"{prefix}.{getattr(parts, target)}")
    return names


class WeightLoraModel(AdaptedModel):
    method_name = "weight-lora"
    peft_type = "LORA"

    def __init__(
        self, base: nn.Module, config: WeightLoraConfig, *, base_hash: str, peft_model: Any = None
    ) -> None:
        from peft import LoraConfig, get_peft_model

        names = target_names(base, config.targets)
        expected = len(config.targets) * len(base.blocks())
        if peft_model is None:
            lora = LoraConfig(
                r=config.r,
                lora_alpha=config.alpha,
                lora_dropout=config.dropout,
                target_modules=names,
                bias="none",
            )
            try:
                peft_model = get_peft_model(base, lora)
            except ValueError as exc:
                raise UsageError(f"weight-lora: {str(exc).splitlines()[0]}") from None
        super().__init__(base, config, base_hash=base_hash)
        object.__setattr__(self, "_peft", peft_model)  # not a submodule: it wraps self.base
        self._layers = self._check_targets(names, expected)

    def _check_targets(self, names: list[str], expected: int) -> dict[str, nn.Module]:
        from peft.tuners.lora import LoraLayer

        layers = {n: m for n, m in self.base.named_modules() if isinstance(m, LoraLayer)}
        missing = [n for n in names if n not in layers]
        if missing or len(layers) != expected:
            raise UsageError(
                f"weight-lora: matched {len(layers)} of {expected} target modules "
                f"({len(self.config.targets)} x {len(self.base.blocks())} layers for "
                f"{','.join(self.config.targets)})"
                + (f"; missing e.g. {missing[0]!r}" if missing else "")
            )
        return layers

    @property
    def peft_model(self):
        """The ``peft.PeftModel`` wrapping ``self.base``."""
        return self._peft

    @property
    def merged(self) -> bool:
        """Whether the LoRA updates are folded into the base's layers."""
        return any(layer.merged for layer in self._layers.values())

    def merge_for_inference(self) -> WeightLoraModel:
        """Fold ``(alpha / r) B A`` into every target layer (peft's ``merge_adapter``): the
        forward is then the plain base's, with no LoRA branch per layer (an sst2 evaluation
        took ~25% less time). :meth:`train` takes the updates out again first."""
        if not self.merged:
            self._peft.merge_adapter()
        return self

    def train(self, mode: bool = True) -> WeightLoraModel:
        # A merged layer skips its LoRA branch: training it would leave B and A without
        # gradients, so the updates go back out before any training step.
        if mode and getattr(self, "_layers", None) and self.merged:
            self._peft.unmerge_adapter()
        return super().train(mode)

    def trainable_parameters(self) -> list[nn.Parameter]:
        params = []
        for layer in self._layers.values():
            params += list(layer.lora_A[ADAPTER_NAME].parameters())
            params += list(layer.lora_B[ADAPTER_NAME].parameters())
        return params

    def _adapter_tensors(self) -> dict[str, torch.Tensor]:
        """Keys as in peft's ``adapter_model.safetensors`` (``base_model.model.<path>.lora_A.weight``)."""
        out = {}
        for path, layer in self._layers.items():
            for kind in ("lora_A", "lora_B"):
                for pname, param in getattr(layer, kind)[ADAPTER_NAME].named_parameters():
                    out[f"base_model.model.{path}.{kind}.{pname}"] = param
        return out

    def save_adapter(
        self, folder: str | Path, *, base_name: str, base_hash: str | None = None
    ) -> Path:
        """peft's own ``save_pretrained`` plus LDP's keys in ``adapter_config.json``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self._peft.peft_config[ADAPTER_NAME].base_model_name_or_path = base_name
        self._peft.save_pretrained(
            str(folder), safe_serialization=True, save_embedding_layers=False
        )
        path = folder / ADAPTER_CONFIG_NAME
        meta = json.loads(path.read_text())
        ours = self.adapter_config(base_name=base_name, base_hash=base_hash)
        for key in ("base_hash", "ldp_method", "ldp_config", "ldp_format", "ldp_version"):
            meta[key] = ours[key]
        path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return folder


def attach(base: nn.Module, config: WeightLoraConfig, *, base_hash: str) -> WeightLoraModel:
    return WeightLoraModel(base, config, base_hash=base_hash)


def load(method, base: nn.Module, folder: Path, meta: dict, base_hash: str) -> WeightLoraModel:
    """Load through ``peft.PeftModel.from_pretrained`` (trainable, so training can resume)."""
    from peft import PeftModel

    config = method.build_config(meta.get("ldp_config") or {})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Unexpected keyword arguments.*")
        peft_model = PeftModel.from_pretrained(base, str(folder), is_trainable=True)
    return WeightLoraModel(base, config, base_hash=base_hash, peft_model=peft_model)
