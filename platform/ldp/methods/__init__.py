"""Adaptation methods behind one interface (see docs/METHOD.md).

Select a method by name and attach it to a base denoiser::

    method = get_method("lora-diffusion")
    model = method.attach(base, method.build_config({"share": "step"}))
    model.trainable_parameters()            # what the optimiser gets
    model.save_adapter(folder, base_name="bases/tiny@3")
    model = load_adapter(fresh_base, folder)  # refuses another base

Methods: ``lora-diffusion`` (the trajectory adapter), ``weight-lora`` (peft), ``prefix``,
``adapters`` (Houlsby), ``bitfit``, ``full``. Each lives in its own subpackage exposing ``METHOD``;
subpackages are imported on first use (importing ``ldp.methods`` loads neither peft nor a model).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

from ldp.errors import UsageError
from ldp.methods.base import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    AdaptedModel,
    Method,
    base_fingerprint,
    read_adapter_config,
    resolve_steps,
)

__all__ = [
    "ADAPTER_CONFIG_NAME",
    "ADAPTER_WEIGHTS_NAME",
    "METHOD_NAMES",
    "AdaptedModel",
    "Method",
    "attach",
    "base_fingerprint",
    "get_method",
    "load_adapter",
    "read_adapter_config",
    "resolve_steps",
]

_MODULES = {
    "lora-diffusion": "ldp.methods.lora_diffusion",
    "weight-lora": "ldp.methods.weight_lora",
    "prefix": "ldp.methods.prefix",
    "adapters": "ldp.methods.adapters",
    "bitfit": "ldp.methods.bitfit",
    "full": "ldp.methods.full",
}

METHOD_NAMES: tuple[str, ...] = tuple(_MODULES)
"""Every ``--method`` name, the project's method first."""


def get_method(name: str) -> Method:
    """The method registered under ``name`` (``_`` and case are tolerated: ``weight_lora``)."""
    key = str(name).strip().lower().replace("_", "-")
    if key not in _MODULES:
        raise UsageError(f"unknown method {name!r}; choose one of: {', '.join(METHOD_NAMES)}")
    return importlib.import_module(_MODULES[key]).METHOD


def attach(
    base: nn.Module, method: str, config=None, *, base_hash: str | None = None
) -> AdaptedModel:
    """Shorthand for ``get_method(method).attach(base, config, base_hash=base_hash)``."""
    return get_method(method).attach(base, config, base_hash=base_hash)


def load_adapter(
    base: nn.Module, folder: str | Path, *, base_hash: str | None = None
) -> AdaptedModel:
    """Attach the adapter saved in ``folder`` to ``base`` (mutated in place) with its weights.

    Refuses (:class:`~ldp.errors.UsageError`) when the base's fingerprint differs from the
    ``base_hash`` recorded at save time. ``base_hash``: the base's fingerprint when the caller
    already knows it (skips re-hashing the weights).
    """
    folder = Path(folder)
    meta = read_adapter_config(folder)
    method = get_method(meta["ldp_method"])
    actual = base_hash or base_fingerprint(base)
    recorded = meta.get("base_hash")
    if recorded != actual:
        raise UsageError(
            f"adapter {folder} was trained on base "
            f"{meta.get('base_model_name_or_path')!r} (hash {str(recorded)[:12]}), "
            f"not on this base (hash {actual[:12]}); refusing to load it"
        )
    return method.load(base, folder, meta, actual)
