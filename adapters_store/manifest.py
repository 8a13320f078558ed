"""``manifest.json``: what a version holds, written last and create-only.

A live manifest lists every file with its sha256 and size, when and by which job the version was
made, the base (reference and digest) it belongs to, and free-form metadata. A version whose
``manifest.json`` is missing does not exist. A *tombstone* manifest (``"tombstone": {...}``) marks
a removed or abandoned version: it also does not exist to readers, and because the manifest slot
is taken for good, its number is never reused and a paused publisher can never complete it.

The digest of a version is the sha256 of its ``manifest.json`` bytes (``sha256:<hex>``): it pins
every file's content, so it is what an adapter records about its base.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ldp.errors import IntegrityError, UsageError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "FileEntry",
    "Manifest",
    "check_file_name",
    "digest_of",
    "utc_now",
]

FORMAT = "ldp.manifest/1"
MANIFEST = "manifest.json"
# Weights are safetensors only; these hold (or usually hold) pickles and are refused.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,254}")
_SHA = re.compile(r"[0-9a-f]{64}")
MAX_DEPTH = 8


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_file_name(name: str, *, error: type[Exception] = UsageError) -> str:
    """A relative file name inside a version: ``a.json`` or ``tokenizer/vocab.txt``.

    Each part matches ``[A-Za-z0-9][A-Za-z0-9._+-]*`` and is not ``..``; no absolute paths, no
    backslashes, at most 8 levels. ``manifest.json`` at the top is the registry's own.
    """
    parts = name.split("/") if isinstance(name, str) else []
    ok = (
        0 < len(parts) <= MAX_DEPTH
        and all(_PART.fullmatch(p) and ".." not in p for p in parts)
        and name != MANIFEST
    )
    if not ok:
        raise error(
            f"invalid file name {name!r}: use relative paths of letters, digits, '.', '_', '+', "
            "'-' (no '..', no absolute paths; 'manifest.json' is reserved)"
        )
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise error(
            f"refusing {name!r}: pickle-based weight files are not stored; save weights as "
            ".safetensors"
        )
    return name


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """The content of ``manifest.json`` (live or tombstone)."""

    ref: str
    files: dict[str, FileEntry] = field(default_factory=dict)
    created: str = ""
    job: str | None = None
    base: dict[str, str] | None = None  # {"ref": "bases/tiny@3", "digest": "sha256:..."}
    metadata: dict[str, Any] = field(default_factory=dict)
    tombstone: dict[str, Any] | None = None  # {"reason": ..., "time": ...}

    @property
    def live(self) -> bool:
        return self.tombstone is None

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_dict(self) -> dict[str, Any]:
        if self.tombstone is not None:
            return {"format": FORMAT, "ref": self.ref, "tombstone": self.tombstone}
        return {
            "format": FORMAT,
            "ref": self.ref,
            "created": self.created,
            "job": self.job,
            "base": self.base,
            "metadata": self.metadata,
            "files": {
                n: {"sha256": f.sha256, "size": f.size} for n, f in sorted(self.files.items())
            },
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def make_tombstone(cls, ref: str, reason: str) -> Manifest:
        return cls(ref=ref, tombstone={"reason": reason, "time": utc_now()})

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str) -> Manifest:
        """Parse and check a stored manifest; anything malformed is an :class:`IntegrityError`."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError):
            raise IntegrityError(f"{where}: manifest.json is not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise IntegrityError(f"{where}: manifest.json has an unknown format")
        ref = doc.get("ref")
        if not isinstance(ref, str):
            raise IntegrityError(f"{where}: manifest.json has no ref")
        if doc.get("tombstone") is not None:
            tomb = doc["tombstone"]
            return cls(ref=ref, tombstone=tomb if isinstance(tomb, dict) else {"reason": "?"})
        raw_files = doc.get("files")
        if not isinstance(raw_files, dict) or not raw_files:
            raise IntegrityError(f"{where}: manifest.json lists no files")
        files: dict[str, FileEntry] = {}
        for name, entry in raw_files.items():
            check_file_name(name, error=IntegrityError)
            sha = entry.get("sha256") if isinstance(entry, dict) else None
            size = entry.get("size") if isinstance(entry, dict) else None
            if not (isinstance(sha, str) and _SHA.fullmatch(sha)):
                raise IntegrityError(f"{where}: manifest.json: bad sha256 for {name}")
            if not (isinstance(size, int) and not isinstance(size, bool) and size >= 0):
                raise IntegrityError(f"{where}: manifest.json: bad size for {name}")
            files[name] = FileEntry(sha, size)
        base = doc.get("base")
        metadata = doc.get("metadata") or {}
        if base is not None and not isinstance(base, dict):
            raise IntegrityError(f"{where}: manifest.json: bad base")
        if not isinstance(metadata, dict):
            raise IntegrityError(f"{where}: manifest.json: bad metadata")
        job = doc.get("job")
        return cls(
            ref=ref,
            files=files,
            created=str(doc.get("created") or ""),
            job=None if job is None else str(job),
            base=base,
            metadata=metadata,
        )
