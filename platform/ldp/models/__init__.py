"""Base denoisers (docs/METHOD.md): one interface, two backbones, size presets.

- :mod:`ldp.models.denoiser`: the ``Denoiser`` protocol every base implements.
- :mod:`ldp.models.native`: ``DiffusionTransformer``, the bidirectional pre-norm RoPE transformer
  (optional adaLN time conditioning), a ``transformers.PreTrainedModel`` (``ldp-diffusion``).
- :mod:`ldp.models.warmstart`: ``WarmStartDenoiser``, any HF encoder / masked LM as a denoiser
  (``ldp-warmstart``).
- :mod:`ldp.models.sizes`: ``tiny``/``350m``/``1.3b``/``7b`` presets, meta-device parameter counts.
- :mod:`ldp.models.loading`: ``load_base``/``save_base`` (folder + tokenizer), ``minilm_path``,
  ``default_tokenizer``.

Names are imported on first use, so ``import ldp.models.denoiser`` does not pull in transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    # denoiser
    "Denoiser",
    "BlockParts",
    # native
    "DiffusionTransformer",
    "DiffusionTransformerConfig",
    "build_config",
    # warm start
    "WarmStartDenoiser",
    "WarmStartConfig",
    "warm_start",
    # sizes
    "SIZES",
    "size_names",
    "size_config",
    "count_parameters",
    # loading
    "load_base",
    "save_base",
    "minilm_path",
    "default_tokenizer",
    "register_auto_classes",
]

_WHERE = {
    "Denoiser": "denoiser",
    "BlockParts": "denoiser",
    "DiffusionTransformer": "native",
    "DiffusionTransformerConfig": "native",
    "build_config": "native",
    "WarmStartDenoiser": "warmstart",
    "WarmStartConfig": "warmstart",
    "warm_start": "warmstart",
    "SIZES": "sizes",
    "size_names": "presets",
    "size_config": "sizes",
    "count_parameters": "sizes",
    "load_base": "loading",
    "save_base": "loading",
    "minilm_path": "loading",
    "default_tokenizer": "loading",
    "register_auto_classes": "loading",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        module = importlib.import_module(f"ldp.models.{_WHERE[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ldp.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
