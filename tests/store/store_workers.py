"""Helpers run in spawned processes by the store tests (and small builders the tests share).

Not a test module: the ``store_workers`` fixture puts this folder on ``sys.path`` so that
``multiprocessing`` (spawn) children can import these functions by name.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def warm() -> None:
    """Pool initializer: pay the imports once per worker, before any barrier."""
    import s3fs  # noqa: F401

    import ldp.store  # noqa: F401


def weights(value: float, n: int = 16) -> bytes:
    """A small safetensors file whose tensor is filled with ``value``."""
    import numpy as np
    from safetensors.numpy import save

    return save({"w": np.full(n, value, dtype=np.float32)})


def read_weights(data: bytes) -> list[float]:
    from safetensors.numpy import load

    return load(data)["w"].tolist()


def barrier(folder: str, me: int, timeout: float = 60.0) -> None:
    """Announce readiness, then wait for the test to create ``go`` (all start together)."""
    Path(folder, f"ready-{me}").touch()
    deadline = time.monotonic() + timeout
    while not Path(folder, "go").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("barrier")
        time.sleep(0.002)


def release(folder: str, n: int, timeout: float = 60.0) -> None:
    """Test side of :func:`barrier`: wait for ``n`` workers, then let them go."""
    deadline = time.monotonic() + timeout
    while len(list(Path(folder).glob("ready-*"))) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(list(Path(folder).glob('ready-*')))} of {n} ready")
        time.sleep(0.005)
    Path(folder, "go").touch()


def publish_one(url: str, options: dict | None, kind_name: str, me: int, folder: str) -> int:
    from ldp.store import Registry

    reg = Registry(url, options)
    files = {
        "adapter_model.safetensors": weights(float(me)),
        "metrics.json": json.dumps({"worker": me}).encode(),
    }
    barrier(folder, me)
    return reg.publish(kind_name, files, job=f"worker-{me}", metadata={"worker": me}).version


def bump_alias(
    url: str, options: dict | None, kind_name: str, alias: str, times: int, me: int, folder: str
) -> tuple[list[int], int]:
    """Move ``alias`` from v to v+1, ``times`` times, each conditional on still reading v.

    Returns the versions this worker moved the alias away from, and how many conflicts it saw.
    """
    from ldp.store import AliasConflictError, Registry

    reg = Registry(url, options)
    moved, conflicts = [], 0
    barrier(folder, me)
    while len(moved) < times:
        current = reg.aliases(kind_name)[alias]
        try:
            reg.set_alias(f"{kind_name}@{current + 1}", alias, expect=current)
        except AliasConflictError:
            conflicts += 1
            continue
        moved.append(current)
    return moved, conflicts


def publish_and_hang(url: str, options: dict | None, kind_name: str, marker: str) -> None:
    """Publish three files but stop for good after the first (the test SIGKILLs us there)."""
    from ldp.store import Registry

    def progress(name: str, i: int, n: int) -> None:
        if i == 1:
            Path(marker).write_text(name)
            time.sleep(600)

    files = {
        "a_config.json": b"{}",
        "b_model.safetensors": weights(7.0),
        "c_metrics.json": b"{}",
    }
    Registry(url, options).publish(kind_name, files, progress=progress)
