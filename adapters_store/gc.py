"""Garbage collection: the leftovers of dead publishers and of removed versions.

A version folder without ``manifest.json`` belongs to a publisher that is still uploading or has
died. It is abandoned when nothing in it changed for ``grace_seconds`` (publishers touch their
claim while uploading) or when its claim names a process on this host that no longer exists.
``gc`` then writes a tombstone manifest *create-only*: if the publisher commits first, ``gc``
loses the race and leaves the version alone; if ``gc`` wins, the publisher's own create-only
manifest write fails and it reports the loss. Then every other object except the claim is
deleted. Tombstoned (removed) versions lose any payload an interrupted ``rm`` left behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from ldp.errors import IntegrityError, UsageError

from .backend import Backend, ObjectInfo
from .claims import CLAIM, parse_claim, publisher_is_gone
from .manifest import MANIFEST, Manifest
from .refs import KINDS, Ref

__all__ = ["GcRecord", "collect_garbage", "version_dir_of"]


@dataclass(frozen=True)
class GcRecord:
    version: str  # "adapters/sst2/lora-diffusion@4"
    reason: str
    removed: tuple[str, ...]  # keys deleted (or to delete, on a dry run)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "reason": self.reason, "removed": list(self.removed)}


def version_dir_of(key: str) -> tuple[Ref, str] | None:
    """``adapters/a/b/4/x/y.json`` -> (``adapters/a/b@4``, ``x/y.json``); None for other keys."""
    parts = key.split("/")
    arity = KINDS.get(parts[0])
    if arity is None or len(parts) < arity + 3:
        return None
    number = parts[arity + 1]
    if not (number.isdigit() and number[0] != "0"):
        return None
    try:
        ref = Ref(parts[0], "/".join(parts[1 : arity + 1]), int(number))
    except UsageError:
        return None  # not a name the registry writes
    return ref, "/".join(parts[arity + 2 :])


def collect_garbage(
    backend: Backend, grace_seconds: float, *, dry_run: bool = False, now: float | None = None
) -> list[GcRecord]:
    now = time.time() if now is None else now
    groups: dict[Ref, dict[str, ObjectInfo]] = {}
    stray_temps = []
    for key, info in backend.find("").items():
        hit = version_dir_of(key)
        if hit is not None:
            groups.setdefault(hit[0], {})[hit[1]] = info
        elif "/_aliases/.tmp-" in key and now - info.mtime >= grace_seconds:
            stray_temps.append(key)  # an alias writer died between its temp file and the rename
    manifests = backend.read_many(
        [f"{r.key}/{r.version}/{MANIFEST}" for r, objs in groups.items() if MANIFEST in objs]
    )
    records = []
    if stray_temps:
        if not dry_run:
            backend.delete(stray_temps)
        records.append(
            GcRecord("-", "temporary files of interrupted alias moves", tuple(stray_temps))
        )
    for ref, objects in sorted(groups.items(), key=lambda kv: (kv[0].key, kv[0].version)):
        vdir = f"{ref.key}/{ref.version}"
        leftovers = sorted(f"{vdir}/{n}" for n in objects if n not in (MANIFEST, CLAIM))
        if MANIFEST in objects:
            try:
                manifest = Manifest.from_bytes(manifests[f"{vdir}/{MANIFEST}"], where=str(ref))
            except (IntegrityError, KeyError):
                continue  # a damaged manifest is for `verify` to report, not for gc to guess at
            if manifest.live or not leftovers:
                continue
            if not dry_run:
                backend.delete(leftovers)
            records.append(GcRecord(str(ref), "leftovers of a removed version", tuple(leftovers)))
            continue
        age = now - max(o.mtime for o in objects.values())
        claim = {}
        if CLAIM in objects:
            try:
                claim = parse_claim(backend.read(f"{vdir}/{CLAIM}"))
            except FileNotFoundError:
                pass
        if publisher_is_gone(claim):
            reason = f"abandoned: publisher process {claim.get('pid')} is gone"
        elif age >= grace_seconds:
            reason = f"abandoned: no progress for {age:.0f}s"
        else:
            continue  # a publisher may still be at work
        if not dry_run:
            tomb = Manifest.make_tombstone(str(ref), reason)
            if not backend.create(f"{vdir}/{MANIFEST}", tomb.to_bytes()):
                continue  # the publisher committed first: the version is live
            backend.delete(leftovers)
        records.append(GcRecord(str(ref), reason, tuple(leftovers)))
    return records
