"""Default locations, read from the environment at call time (never at import time)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ldp_home", "default_registry_url", "default_data_dir", "cache_dir"]


def ldp_home() -> Path:
    """``LDP_HOME`` or ``~/.ldp``: the root of every local default below."""
    return Path(os.environ.get("LDP_HOME") or Path.home() / ".ldp")


def default_registry_url() -> str:
    """``LDP_REGISTRY`` (any fsspec URL) or a local folder under :func:`ldp_home`."""
    return os.environ.get("LDP_REGISTRY") or (ldp_home() / "registry").as_uri()


def default_data_dir() -> str | None:
    """``LDP_DATA_DIR`` (a local or ``s3://`` mirror of ``<task>/<split>.jsonl``) or None (hub)."""
    return os.environ.get("LDP_DATA_DIR") or None


def cache_dir(*parts: str) -> Path:
    """A cache folder under ``LDP_CACHE`` or ``~/.ldp/cache``, created on demand."""
    root = Path(os.environ.get("LDP_CACHE") or ldp_home() / "cache")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
