"""Cheap checks of option values, run before any expensive work (by the CLI and job specs).

Each raises :class:`~ldp.errors.UsageError` (exit 2) with one line naming the option, so a
typo in an output path or a URL fails in a second instead of after an hour of training.
"""

from __future__ import annotations

import os
from pathlib import Path

from ldp.errors import UsageError

__all__ = ["data_location", "output_file", "output_folder", "port", "positive", "registry_location"]

_DATA_SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs")
_REGISTRY_SCHEMES = ("file", "s3")


def positive(option: str, value: float | None, *, allow_zero: bool = False) -> None:
    """``value`` is None or >= 1 (or >= 0 with ``allow_zero``)."""
    if value is None:
        return
    low = 0 if allow_zero else 1
    if value < low:
        raise UsageError(f"{option} must be >= {low}, got {value}")


def port(option: str, value: int | None) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise UsageError(f"{option} must be a TCP port (1-65535), got {value}")


def _scheme(value: str) -> str | None:
    return value.split("://", 1)[0].lower() if "://" in value else None


def data_location(option: str, value: str | None) -> None:
    """A data mirror: ``hub``, a URL fsspec can serve, or an existing local folder."""
    if value is None or value == "hub":
        return
    scheme = _scheme(value)
    if scheme is not None:
        if scheme not in _DATA_SCHEMES:
            raise UsageError(f"{option}: unsupported URL scheme {scheme!r} in {value} (use a folder, s3:// or 'hub')")
        return
    if not Path(value).expanduser().is_dir():
        raise UsageError(f"{option}: no such folder: {value}")


def _writable_folder(path: Path) -> bool:
    """``path`` exists as a writable folder, or could be created under one."""
    probe = next((p for p in (path, *path.parents) if p.exists()), None)
    return probe is not None and probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def registry_location(option: str, value: str | None) -> None:
    """A registry: ``file://`` or ``s3://``, or a local folder that can be written."""
    if value is None:
        return
    scheme = _scheme(value)
    if scheme is not None and scheme not in _REGISTRY_SCHEMES:
        raise UsageError(f"{option}: unsupported URL scheme {scheme!r} in {value} (use a folder, file:// or s3://)")
    if scheme in (None, "file"):
        path = Path(value.removeprefix("file://")).expanduser()
        if not _writable_folder(path):
            raise UsageError(f"{option}: {value} is not a writable folder")


def output_file(option: str, value: Path | str | None) -> None:
    """A file the command will write at the end: its folder exists and is writable, and it is
    not a folder itself (``-`` means stdout)."""
    if value is None or str(value) == "-":
        return
    path = Path(value).expanduser()
    if path.is_dir():
        raise UsageError(f"{option}: {value} is a folder; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(f"{option}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"{option}: cannot write {value}")


def output_folder(option: str, value: Path | str | None) -> None:
    """A folder the command will create or fill: it can be created and written."""
    if value is None:
        return
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option}: {value} is a file, not a folder")
    if not _writable_folder(path):
        raise UsageError(f"{option}: cannot create or write {value}")
