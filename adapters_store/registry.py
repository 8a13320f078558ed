"""The registry: publish, resolve, pull, list, remove, verify, alias and collect garbage.

Layout under the registry URL (any ``file://`` or ``s3://`` location)::

    bases/<name>/<version>/            adapters/<task>/<method>/<version>/
    routers/<name>/<version>/          bundles/<name>/<version>/
    sweeps/<name>/<version>/
        <files...>  manifest.json  _claim.json
    <kind>/<name...>/_aliases/<alias>.json

A version exists when its ``manifest.json`` exists and is not a tombstone. ``latest`` is computed
(the highest such version), so it can only ever name a complete version. Aliases are small JSON
documents moved by compare-and-swap.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ldp.errors import IntegrityError, LdpError, NotFoundError, UsageError
from ldp.paths import cache_dir, default_registry_url

from .backend import CHUNK, Backend, open_backend, redact_url
from .cache import BlobCache, materialize
from .claims import CLAIM, Heartbeat, claim_bytes
from .gc import GcRecord, collect_garbage, version_dir_of
from .manifest import MANIFEST, FileEntry, Manifest, digest_of, utc_now
from .refs import LATEST, Ref, check_alias, parse_prefix, parse_ref
from .sources import Files, collect

__all__ = [
    "ANY",
    "AliasConflictError",
    "Registry",
    "VerifyResult",
    "VersionInfo",
]

log = logging.getLogger("ldp.store")

ALIASES = "_aliases"
DEFAULT_GRACE_SECONDS = 3600.0


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY: Any = _Any()  # set_alias(expect=ANY): move the alias whatever it points at now


class AliasConflictError(LdpError):
    """An alias did not hold the expected version when it was to be moved (exit code 1)."""


@dataclass(frozen=True)
class VersionInfo:
    ref: Ref
    size: int  # bytes, sum of the files
    digest: str  # sha256 of manifest.json ("sha256:<hex>")
    created: str
    job: str | None
    files: int
    base: str | None
    aliases: tuple[str, ...] = ()
    latest: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "ref": str(self.ref),
            "kind": self.ref.kind,
            "name": self.ref.name,
            "version": self.ref.version,
            "size": self.size,
            "digest": self.digest,
            "created": self.created,
            "job": self.job,
            "files": self.files,
            "base": self.base,
            "aliases": list(self.aliases),
            "latest": self.latest,
        }


@dataclass(frozen=True)
class VerifyResult:
    ref: str
    problems: tuple[str, ...]  # one line each, naming the file

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ref": self.ref, "ok": self.ok, "problems": list(self.problems)}


def _storage_errors(fn):
    """Turn storage failures (OSError, botocore) into one-line LdpErrors; pass ours through."""

    @functools.wraps(fn)
    def wrapper(self: Registry, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except LdpError:
            raise
        except Exception as exc:
            top = type(exc).__module__.split(".")[0]
            if not isinstance(exc, OSError) and top not in ("botocore", "aiobotocore", "s3fs"):
                raise
            text = " ".join(str(exc).split()) or type(exc).__name__
            cls = NotFoundError if isinstance(exc, FileNotFoundError) else LdpError
            raise cls(f"registry {self.url}: {text}") from exc

    return wrapper


class Registry:
    """An adapter registry at ``url`` (default :func:`ldp.paths.default_registry_url`).

    ``storage_options`` go to fsspec (for S3: ``client_kwargs={"endpoint_url": ...}``, ``profile``
    …); the S3 endpoint may also come from ``LDP_S3_ENDPOINT_URL``.
    """

    def __init__(
        self,
        url: str | None = None,
        storage_options: dict[str, Any] | None = None,
        *,
        cache: str | Path | None = None,
    ) -> None:
        self.backend: Backend = open_backend(url or default_registry_url(), storage_options)
        self._cache_root = cache

    @property
    def url(self) -> str:
        return redact_url(self.backend.url)

    @property
    def cache(self) -> BlobCache:
        return BlobCache(self._cache_root)

    def __repr__(self) -> str:
        return f"Registry({self.url!r})"

    # -- publishing ----------------------------------------------------------------------------
    @_storage_errors
    def publish(
        self,
        kind_name: str,
        folder_or_files: Files,
        *,
        job: str | None = None,
        base: str | Ref | dict[str, str] | None = None,
        metadata: dict[str, Any] | None = None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> Ref:
        """Store files as the next version of ``kind_name`` (``adapters/sst2/lora-diffusion``).

        ``folder_or_files``: a folder, a file, a list of files or ``{name: path | bytes}``.
        ``base``: the base the thing belongs to (a reference resolved here, or
        ``{"ref", "digest"}``). ``progress(name, i, n)`` is called after each stored file. Files
        go first, the manifest last and create-only; on any failure the version is tombstoned
        and its files removed.
        """
        target = parse_ref(kind_name, versioned=False)
        sources = collect(folder_or_files)
        try:
            meta = json.loads(json.dumps(metadata or {}))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"metadata must be JSON-serialisable: {exc}") from None
        if not isinstance(meta, dict):
            raise UsageError("metadata must be a mapping")
        base_info = self._base_info(base)
        ref, token = self._claim(target, job)
        vdir = self._vdir(ref)
        heartbeat = Heartbeat(
            lambda: self.backend.write(f"{vdir}/{CLAIM}", claim_bytes(str(ref), token, job))
        )
        committed = False
        try:
            entries: dict[str, FileEntry] = {}
            for i, source in enumerate(sources, 1):
                with source.open() as fh:
                    sha, size = self.backend.upload(f"{vdir}/{source.name}", fh, heartbeat.maybe)
                entries[source.name] = FileEntry(sha, size)
                if progress is not None:
                    progress(source.name, i, len(sources))
            manifest = Manifest(
                ref=str(ref),
                files=entries,
                created=utc_now(),
                job=job,
                base=base_info,
                metadata=meta,
            )
            if not self.backend.create(f"{vdir}/{MANIFEST}", manifest.to_bytes()):
                raise LdpError(
                    f"{ref}: reclaimed by gc while publishing (no progress for longer than its "
                    "grace period); publish again"
                )
            committed = True
        finally:
            if not committed:
                self._abandon(ref, "publisher failed")
        log.info("published %s to %s", ref, self.url)
        return ref

    def _claim(self, target: Ref, job: str | None) -> tuple[Ref, str]:
        token = uuid.uuid4().hex
        version = max(self._versions(target), default=0) + 1
        for _ in range(10_000):
            ref = target.at(version)
            vdir = self._vdir(ref)
            # Claims are never deleted, so a won claim means a fresh number; the manifest check
            # guards against a claim removed by hand.
            won = self.backend.create(f"{vdir}/{CLAIM}", claim_bytes(str(ref), token, job))
            if won and self._read_manifest(ref) is None:
                return ref, token
            version += 1
        raise LdpError(f"{target.key}: could not claim a version number")

    def _abandon(self, ref: Ref, reason: str) -> None:
        vdir = self._vdir(ref)
        try:
            tomb = Manifest.make_tombstone(str(ref), reason).to_bytes()
            if not self.backend.create(f"{vdir}/{MANIFEST}", tomb):
                found = self._read_manifest(ref)
                if found is not None and found[0].live:
                    return  # not ours to clean (only possible if the store broke create-only)
            self._delete_payload(ref)
        except Exception as exc:  # noqa: BLE001 - best effort; gc finishes the job
            log.warning("could not clean up %s: %s", ref, exc)

    def _base_info(self, base: str | Ref | dict[str, str] | None) -> dict[str, str] | None:
        if base is None:
            return None
        if isinstance(base, dict):
            ref, digest = base.get("ref"), base.get("digest")
            if not isinstance(ref, str) or not isinstance(digest, str) or ":" not in digest:
                raise UsageError("base must be a reference or {'ref': ..., 'digest': 'sha256:...'}")
            if parse_ref(ref).kind != "bases":
                raise UsageError(f"base {ref} is not under bases/")
            return {"ref": ref, "digest": digest}
        resolved = self.resolve(base)
        if resolved.kind != "bases":
            raise UsageError(f"base {resolved} is not under bases/")
        return {"ref": str(resolved), "digest": self.digest(resolved)}

    # -- reading -------------------------------------------------------------------------------
    @_storage_errors
    def resolve(self, ref: str | Ref) -> Ref:
        """The concrete ``Ref(kind, name, version)`` that ``ref`` names now.

        ``@latest`` (or no version) is the highest version with a live manifest; an alias is read
        from its document. Raises :class:`NotFoundError` if there is no such version.
        """
        r = parse_ref(ref)
        if r.version == LATEST:
            for version in sorted(self._versions(r), reverse=True):
                found = self._read_manifest(r.at(version))
                if found is not None and found[0].live:
                    return r.at(version)
            raise NotFoundError(f"{r}: no versions of {r.key} in {self.url}")
        concrete = r
        if isinstance(r.version, str):
            doc = self._read_alias(r.key, r.version)
            held = doc.get("version") if doc else None
            if not isinstance(held, int) or isinstance(held, bool) or held < 1:
                raise NotFoundError(f"{r}: no alias {r.version!r} for {r.key} in {self.url}")
            concrete = r.at(held)
        found = self._read_manifest(concrete)
        if found is None:
            raise NotFoundError(f"{concrete} not found in {self.url}")
        if not found[0].live:
            via = f" (alias {r.version})" if concrete != r else ""
            reason = found[0].tombstone.get("reason", "removed") if found[0].tombstone else ""
            raise NotFoundError(f"{concrete}{via} no longer exists: {reason}")
        return concrete

    @_storage_errors
    def open_manifest(self, ref: str | Ref) -> Manifest:
        return self._live(ref)[1]

    @_storage_errors
    def digest(self, ref: str | Ref) -> str:
        """``sha256:<hex>`` of the version's ``manifest.json``: pins every file's content."""
        return digest_of(self._live(ref)[2])

    @_storage_errors
    def pull(self, ref: str | Ref, to: str | Path | None = None) -> Path:
        """Verify every file into the local blob cache and materialise the version as a folder.

        Without ``to`` the folder is a managed, read-only snapshot under the cache (hard links to
        the blobs); with ``to`` the files are copied there (``to`` must be absent or empty).
        The folder also holds ``manifest.json``. A corrupt or truncated file raises
        :class:`IntegrityError` naming it, and nothing is materialised.
        """
        r, manifest, raw = self._live(ref)
        blobs = {name: self._blob(r, name, entry) for name, entry in manifest.files.items()}
        if to is None:
            folder = cache_dir("snapshots", r.kind, *r.name.split("/"))
            dest = folder / f"{r.version}-{hashlib.sha256(raw).hexdigest()[:12]}"
            return materialize(blobs, manifest, raw, dest, link=True)
        return materialize(blobs, manifest, raw, Path(to), link=False)

    @_storage_errors
    def read_bytes(self, ref: str | Ref, filename: str) -> bytes:
        """One file of a version (for example ``metrics.json``), checksum-verified."""
        r, manifest, _ = self._live(ref)
        entry = manifest.files.get(filename)
        if entry is None:
            raise NotFoundError(f"{r} has no file {filename!r} (has: {', '.join(manifest.files)})")
        return self._blob(r, filename, entry).read_bytes()

    def read_json(self, ref: str | Ref, filename: str = "metrics.json") -> Any:
        data = self.read_bytes(ref, filename)
        try:
            return json.loads(data)
        except ValueError:
            raise IntegrityError(f"{ref}: {filename} is not valid JSON") from None

    @_storage_errors
    def ls(self, prefix: str | None = None) -> list[VersionInfo]:
        """Every live version under ``prefix`` (``adapters``, ``adapters/sst2``, ``bases/tiny``),
        or the one version a full reference (``bases/tiny@3``) names."""
        if prefix and "@" in prefix:
            r = self.resolve(prefix)
            prefix = r.key
            only: Ref | None = r
        else:
            only = None
        manifests, aliases = self._scan(parse_prefix(prefix))
        latest: dict[str, int] = {}
        live: list[tuple[Ref, Manifest, bytes]] = []
        for ref, raw in manifests.items():
            try:
                manifest = Manifest.from_bytes(raw, where=str(ref))
            except IntegrityError as exc:
                log.warning("skipping %s", exc)
                continue
            if manifest.live:
                live.append((ref, manifest, raw))
                latest[ref.key] = max(latest.get(ref.key, 0), int(ref.version))
        out = []
        for ref, m, raw in sorted(live, key=lambda t: (t[0].key, t[0].version)):
            if only is not None and ref != only:
                continue
            names = tuple(
                sorted(a for a, v in aliases.get(ref.key, {}).items() if v == ref.version)
            )
            out.append(
                VersionInfo(
                    ref=ref,
                    size=m.size,
                    digest=digest_of(raw),
                    created=m.created,
                    job=m.job,
                    files=len(m.files),
                    base=(m.base or {}).get("ref"),
                    aliases=names,
                    latest=latest[ref.key] == ref.version,
                )
            )
        return out

    @_storage_errors
    def show(self, ref: str | Ref) -> dict[str, Any]:
        """Everything about one version: location, digest, size, aliases and the manifest."""
        r, manifest, raw = self._live(ref)
        return {
            "ref": str(r),
            "location": self.backend.location(self._vdir(r)),
            "digest": digest_of(raw),
            "size": manifest.size,
            "latest": self.resolve(r.at(LATEST)) == r,
            "aliases": sorted(a for a, v in self.aliases(r.key).items() if v == r.version),
            "manifest": manifest.to_dict(),
        }

    @_storage_errors
    def aliases(self, kind_name: str | Ref) -> dict[str, int]:
        """``{alias: version}`` for one name."""
        key = parse_ref(kind_name).key
        out = {}
        for entry in self.backend.listdir(f"{key}/{ALIASES}"):
            if not entry.endswith(".json") or entry.startswith("."):
                continue
            doc = self._read_alias(key, entry[: -len(".json")])
            if doc and isinstance(doc.get("version"), int):
                out[entry[: -len(".json")]] = doc["version"]
        return out

    # -- changing ------------------------------------------------------------------------------
    @_storage_errors
    def set_alias(self, ref: str | Ref, alias: str, *, expect: Any = ANY) -> Ref:
        """Point ``alias`` at the version ``ref`` names, by compare-and-swap.

        ``expect``: the version the alias must hold now (``None``: must not exist); a different
        value raises :class:`AliasConflictError`. With the default ``ANY`` the move is retried
        until it lands. Returns the concrete reference the alias now names.
        """
        check_alias(alias)
        target = self.resolve(ref)
        self._swap_alias(target.key, alias, target.version, expect)
        return target

    @_storage_errors
    def rm(self, ref: str | Ref, *, force: bool = False) -> Ref:
        """Remove one version (an explicit number or an alias, never ``@latest``).

        The manifest becomes a tombstone first (the version disappears at once and its number is
        never reused), then its files are deleted. A version that an alias points at is kept
        unless ``force``, which also unsets those aliases.
        """
        parsed = parse_ref(ref, versioned=True)
        if parsed.version == LATEST:
            raise UsageError(f"{parsed}: rm needs an explicit version, not @latest")
        r = self.resolve(parsed)
        pointing = sorted(a for a, v in self.aliases(r.key).items() if v == r.version)
        if pointing and not force:
            raise LdpError(
                f"{r} is aliased as {', '.join(pointing)}; move the alias first or force "
                "the removal"
            )
        for alias in pointing:
            try:
                self._swap_alias(r.key, alias, None, r.version)
            except AliasConflictError:
                pass  # moved meanwhile: it no longer names this version
        tomb = Manifest.make_tombstone(str(r), "removed")
        self.backend.write(f"{self._vdir(r)}/{MANIFEST}", tomb.to_bytes())
        self._delete_payload(r)
        return r

    @_storage_errors
    def verify(self, ref: str | Ref | None = None) -> list[VerifyResult]:
        """Re-hash every stored file of ``ref`` (or of every version) against its manifest."""
        if ref is not None:
            r = self.resolve(ref)
            raws = {r: self.backend.read(f"{self._vdir(r)}/{MANIFEST}")}
        else:
            raws = self._scan("")[0]
        results = []
        for r, raw in sorted(raws.items(), key=lambda kv: (kv[0].key, kv[0].version)):
            try:
                manifest = Manifest.from_bytes(raw, where=str(r))
            except IntegrityError as exc:
                results.append(VerifyResult(str(r), (str(exc),)))
                continue
            if manifest.live:
                problems = tuple(
                    p for n, e in manifest.files.items() if (p := self._check_file(r, n, e))
                )
                results.append(VerifyResult(str(r), problems))
        return results

    @_storage_errors
    def gc(
        self, grace_seconds: float = DEFAULT_GRACE_SECONDS, *, dry_run: bool = False
    ) -> list[GcRecord]:
        """Tombstone abandoned versions (no manifest, no progress for ``grace_seconds`` or a dead
        publisher on this host) and delete their files and those left by removed versions."""
        return collect_garbage(self.backend, grace_seconds, dry_run=dry_run)

    # -- internals -----------------------------------------------------------------------------
    @staticmethod
    def _vdir(ref: Ref) -> str:
        assert ref.concrete, ref
        return f"{ref.key}/{ref.version}"

    def _versions(self, r: Ref) -> list[int]:
        return [
            int(n) for n in self.backend.listdir(r.key) if n.isdigit() and not n.startswith("0")
        ]

    def _read_manifest(self, ref: Ref) -> tuple[Manifest, bytes] | None:
        try:
            raw = self.backend.read(f"{self._vdir(ref)}/{MANIFEST}")
        except FileNotFoundError:
            return None
        manifest = Manifest.from_bytes(raw, where=str(ref))
        if manifest.ref != str(ref):
            raise IntegrityError(f"{ref}: manifest.json belongs to {manifest.ref}")
        return manifest, raw

    def _live(self, ref: str | Ref) -> tuple[Ref, Manifest, bytes]:
        r = self.resolve(ref)
        found = self._read_manifest(r)
        if found is None or not found[0].live:  # removed between the two reads
            raise NotFoundError(f"{r} no longer exists")
        return r, found[0], found[1]

    def _blob(self, r: Ref, name: str, entry: FileEntry) -> Path:
        key = f"{self._vdir(r)}/{name}"
        return self.cache.fetch(
            entry.sha256, entry.size, lambda: self.backend.open(key), label=f"{r}: {name}"
        )

    def _check_file(self, r: Ref, name: str, entry: FileEntry) -> str | None:
        h, n = hashlib.sha256(), 0
        try:
            with self.backend.open(f"{self._vdir(r)}/{name}") as f:
                while chunk := f.read(CHUNK):
                    h.update(chunk)
                    n += len(chunk)
        except FileNotFoundError:
            return f"{r}: {name}: missing"
        if n != entry.size:
            return f"{r}: {name}: size mismatch (expected {entry.size} bytes, got {n})"
        if h.hexdigest() != entry.sha256:
            got = h.hexdigest()
            return (
                f"{r}: {name}: sha256 mismatch (expected {entry.sha256[:16]}..., got {got[:16]}...)"
            )
        return None

    def _delete_payload(self, r: Ref) -> None:
        vdir = self._vdir(r)
        keep = {f"{vdir}/{MANIFEST}", f"{vdir}/{CLAIM}"}
        self.backend.delete(sorted(k for k in self.backend.find(vdir) if k not in keep))

    def _scan(self, prefix: str) -> tuple[dict[Ref, bytes], dict[str, dict[str, int]]]:
        """One recursive listing: manifests by version, and ``{name_key: {alias: version}}``."""
        manifest_keys: dict[str, Ref] = {}
        alias_keys: dict[str, tuple[str, str]] = {}
        for key in self.backend.find(prefix):
            hit = version_dir_of(key)
            if hit is not None:
                if hit[1] == MANIFEST:
                    manifest_keys[key] = hit[0]
                continue
            head, _, tail = key.rpartition(f"/{ALIASES}/")
            if head and tail.endswith(".json") and "/" not in tail and not tail.startswith("."):
                alias_keys[key] = (head, tail[: -len(".json")])
        raws = self.backend.read_many(list(manifest_keys) + list(alias_keys))
        manifests = {manifest_keys[k]: v for k, v in raws.items() if k in manifest_keys}
        aliases: dict[str, dict[str, int]] = {}
        for key, (name_key, alias) in alias_keys.items():
            doc = _json_or_none(raws.get(key))
            if doc and isinstance(doc.get("version"), int):
                aliases.setdefault(name_key, {})[alias] = doc["version"]
        return manifests, aliases

    def _alias_key(self, name_key: str, alias: str) -> str:
        return f"{name_key}/{ALIASES}/{check_alias(alias)}.json"

    def _read_alias(self, name_key: str, alias: str) -> dict[str, Any] | None:
        try:
            return _json_or_none(self.backend.read(self._alias_key(name_key, alias)))
        except FileNotFoundError:
            return None

    def _swap_alias(self, name_key: str, alias: str, version: int | None, expect: Any) -> None:
        key = self._alias_key(name_key, alias)
        for attempt in range(200):
            current = self.backend.read_versioned(key)
            doc = _json_or_none(current[0]) if current else None
            held = doc.get("version") if doc else None
            if expect is not ANY and held != expect:
                raise AliasConflictError(
                    f"{name_key}@{alias} is at {held if held is not None else 'nothing'}, "
                    f"expected {expect if expect is not None else 'nothing'}"
                )
            new = {
                "alias": alias,
                "name": name_key,
                "version": version,
                "previous": held,
                "seq": int((doc or {}).get("seq", 0)) + 1,  # makes every write distinct (no ABA)
                "updated": utc_now(),
            }
            data = json.dumps(new, sort_keys=True).encode()
            if self.backend.swap(key, data, current[1] if current else None):
                return
            time.sleep(random.uniform(0.001, 0.01) * min(attempt + 1, 10))
        raise AliasConflictError(f"{name_key}@{alias}: too much contention, gave up")


def _json_or_none(data: bytes | None) -> dict[str, Any] | None:
    if not data:
        return None
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None
