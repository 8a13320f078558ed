"""The local content-addressed blob cache and folder materialisation.

Blobs live at ``<cache>/sha256/<ab>/<abcdef...>``, read-only. A blob enters the cache only after
its bytes were hashed and sized while downloading and matched the manifest; a mismatch is an
:class:`~ldp.errors.IntegrityError` naming the file, and nothing is kept. Identical files across
versions (a shared tokenizer, an unchanged config) are fetched once.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from ldp.errors import IntegrityError, UsageError
from ldp.paths import cache_dir

from .backend import CHUNK
from .manifest import MANIFEST, Manifest

__all__ = ["BlobCache", "materialize"]


class BlobCache:
    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir("blobs")

    def path(self, sha256: str) -> Path:
        return self.root / "sha256" / sha256[:2] / sha256

    def get(self, sha256: str, size: int) -> Path | None:
        p = self.path(sha256)
        try:
            return p if p.stat().st_size == size else None
        except FileNotFoundError:
            return None

    def fetch(self, sha256: str, size: int, opener: Callable[[], IO[bytes]], *, label: str) -> Path:
        """The cached blob, downloading and verifying it through ``opener`` when missing."""
        hit = self.get(sha256, size)
        if hit is not None:
            return hit
        target = self.path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{sha256}.{uuid.uuid4().hex[:12]}.part"
        h, n = hashlib.sha256(), 0
        try:
            try:
                src = opener()
            except FileNotFoundError:
                raise IntegrityError(f"{label}: missing from the registry") from None
            with src, open(tmp, "wb") as dst:
                while n <= size and (chunk := src.read(CHUNK)):
                    h.update(chunk)
                    n += len(chunk)
                    dst.write(chunk)
            if n != size:
                raise IntegrityError(
                    f"{label}: size mismatch (expected {size} bytes, got "
                    f"{'more' if n > size else n}): truncated or corrupt"
                )
            got = h.hexdigest()
            if got != sha256:
                raise IntegrityError(
                    f"{label}: sha256 mismatch (expected {sha256[:16]}..., got {got[:16]}...): "
                    "corrupt"
                )
            os.chmod(tmp, 0o444)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target


def materialize(
    blobs: dict[str, Path], manifest: Manifest, manifest_bytes: bytes, dest: Path, *, link: bool
) -> Path:
    """Build ``dest`` holding the version's files and its ``manifest.json``.

    The folder is assembled beside ``dest`` and renamed into place, so ``dest`` is either absent
    or complete. ``link`` hard-links read-only blobs (managed snapshots) instead of copying.
    An existing ``dest`` is reused when it already holds this exact version, must be empty
    otherwise.
    """
    dest = Path(dest).expanduser().absolute()
    if dest.exists():
        if _is_complete(dest, manifest, manifest_bytes):
            return dest
        if not dest.is_dir() or any(dest.iterdir()):
            raise UsageError(f"destination {dest} exists and is not empty")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.ldp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        for name, blob in blobs.items():
            out = tmp.joinpath(*name.split("/"))
            out.parent.mkdir(parents=True, exist_ok=True)
            if link:
                try:
                    os.link(blob, out)
                    continue
                except OSError:
                    pass
            shutil.copyfile(blob, out)
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        try:
            os.rename(tmp, dest)
        except OSError:
            if _is_complete(dest, manifest, manifest_bytes):  # a concurrent pull won
                return dest
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _is_complete(dest: Path, manifest: Manifest, manifest_bytes: bytes) -> bool:
    try:
        if (dest / MANIFEST).read_bytes() != manifest_bytes:
            return False
        return all(
            dest.joinpath(*n.split("/")).stat().st_size == f.size for n, f in manifest.files.items()
        )
    except OSError:
        return False
