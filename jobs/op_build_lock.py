"""Stale locks of DeepSpeed's JIT-built ops, found and removed before a worker waits on them forever.

DeepSpeed builds its native ops (on CPU: the shared-memory collectives, ``deepspeed_shm_comm``)
with ``torch.utils.cpp_extension`` on first use, into ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``). torch guards each op's build folder with a ``lock`` file that
holds no owner: whoever creates it builds, everyone else polls until it disappears, with no
timeout, and every later load takes the same lock even when the op is already built. A build that
is killed part-way (a job cancelled, a worker out of memory, a machine stopped) leaves the file
behind, and every later DeepSpeed job on that machine then hangs at start-up.

:func:`wait_for_op_builds` runs before ``deepspeed.initialize``. A lock whose folder has seen no
write for ``stale_after`` seconds is left over from a dead build and is removed (a live build
writes its objects and ``.ninja_log`` as it goes; the CPU op builds in about a minute on two
cores). A younger lock belongs to a build in progress, in this job's other worker or another
job: the worker waits for it to end, or to go stale.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["STALE_AFTER_SECONDS", "extensions_root", "stale_locks", "wait_for_op_builds"]

STALE_AFTER_SECONDS = 300.0
"""No write in an op's build folder for this long: its lock is left over from a dead build."""


def extensions_root() -> Path:
    """The folder holding one build folder per op, as torch lays it out: ``TORCH_EXTENSIONS_DIR``
    itself when set, else ``~/.cache/torch_extensions/py<version>_<cpu|cuXY|rocmXY>``."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env).expanduser()
    import torch
    from torch.utils.cpp_extension import get_default_build_root

    if torch.version.hip is not None:
        device = "rocm" + torch.version.hip.replace(".", "")
    elif torch.version.cuda is not None:
        device = "cu" + torch.version.cuda.replace(".", "")
    else:
        device = "cpu"
    tag = f"py{sys.version_info.major}{sys.version_info.minor}{getattr(sys, 'abiflags', '')}"
    return Path(get_default_build_root()) / f"{tag}_{device}"


def _last_write(folder: Path) -> float:
    times = []
    for path in [folder, *folder.iterdir()]:
        try:
            times.append(path.stat().st_mtime)
        except FileNotFoundError:  # removed while we looked (a build finishing)
            continue
    return max(times, default=0.0)


def _locks(root: Path) -> list[Path]:
    return sorted(root.glob("*/lock")) if root.is_dir() else []  # <root>/<op name>/lock


def stale_locks(root: Path, stale_after: float = STALE_AFTER_SECONDS, now: float | None = None) -> list[Path]:
    """The op-build locks under ``root`` whose folder has had no write for ``stale_after`` s."""
    now = time.time() if now is None else now
    return [lock for lock in _locks(root) if now - _last_write(lock.parent) >= stale_after]


def wait_for_op_builds(
    root: Path | None = None,
    *,
    stale_after: float = STALE_AFTER_SECONDS,
    poll: float = 2.0,
    log: Callable[[str], None] = print,
) -> list[Path]:
    """Remove stale op-build locks under ``root`` and wait while live builds hold the others.

    Returns the locks removed. Never raises for a lock that vanishes meanwhile (another worker
    removed it, or its build ended)."""
    root = extensions_root() if root is None else root
    removed: list[Path] = []
    told = False
    while True:
        for lock in stale_locks(root, stale_after):
            try:
                lock.unlink()
            except FileNotFoundError:
                continue
            removed.append(lock)
            log(f"[ldp] removed a stale DeepSpeed op-build lock {lock} (no write in its folder "
                f"for {stale_after:.0f} s: a build was killed part-way)")
        live = _locks(root)
        if not live:
            return removed
        if not told:
            log(f"[ldp] waiting for a DeepSpeed op build in progress ({live[0].parent})")
            told = True
        time.sleep(poll)
