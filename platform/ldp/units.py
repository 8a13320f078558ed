"""Human-readable numbers: byte sizes and parameter counts, one formatter each for every command.

Decimal units (``13.5 GB``) by default, as GPU memory and disks are sold ("an 80 GB GPU");
``binary=True`` gives ``KiB``/``MiB``/``GiB`` for file sizes where that is the convention.
"""

from __future__ import annotations

import math

__all__ = ["format_bytes", "format_count"]

_DECIMAL = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3))
_BINARY = (("TiB", 1024.0**4), ("GiB", 1024.0**3), ("MiB", 1024.0**2), ("KiB", 1024.0))


def format_bytes(n: float, *, binary: bool = False) -> str:
    """``13.5 GB`` (or ``12.6 GiB`` with ``binary``); below one kilobyte ``512 B``."""
    if n < 0 or math.isnan(n):
        raise ValueError(f"bytes must be >= 0, got {n}")
    for unit, scale in _BINARY if binary else _DECIMAL:
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def format_count(n: int) -> str:
    """``6.74 B``, ``1.30 M``, ``12.5 K`` parameters; below a thousand the number itself."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)
