"""Storage backends: the few atomic primitives the registry is built on, over fsspec.

Keys are ``/``-separated paths relative to the registry root. Besides plain reads, listing and
deletes, a backend offers:

- ``create(key, data)``: create-only write, all or nothing; False when the key exists.
  file://: write a temporary file, then ``os.link`` it to the key (fails if the key exists, and
  readers never see a partial file). s3://: ``PutObject`` with ``If-None-Match: *``.
- ``read_versioned(key)`` / ``swap(key, data, token)``: compare-and-swap. file://: the token is the
  content's sha256, and the check-and-replace runs under an exclusive ``flock`` on a lock file
  beside the key (released by the kernel if the holder dies), the new content landing by atomic
  ``os.replace``. s3://: the token is the ETag, written with ``PutObject`` + ``If-Match``.

Other protocols are refused: without these two primitives the registry could not keep its
promises (no lost versions, no torn aliases).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from ldp.errors import LdpError, UsageError

__all__ = ["Backend", "LocalBackend", "ObjectInfo", "S3Backend", "open_backend", "redact_url"]

CHUNK = 1 << 20
S3_ENDPOINT_ENV = "LDP_S3_ENDPOINT_URL"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    mtime: float  # seconds since the epoch, as the store reports it


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@`` part, for messages and logs."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


class Backend:
    """Common operations through an fsspec filesystem rooted at ``root``."""

    missing_root_is_empty = True

    def __init__(self, fs: Any, root: str, url: str) -> None:
        self.fs = fs
        self.root = root.rstrip("/")
        self.url = url

    # -- paths ---------------------------------------------------------------------------------
    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def location(self, key: str) -> str:
        """A URL for people (``s3://bucket/registry/bases/tiny/3``)."""
        return f"{self.url.rstrip('/')}/{key}" if key else self.url

    def _key_of(self, path: str) -> str:
        path = path.rstrip("/")
        if path == self.root:
            return ""
        prefix = self.root + "/"
        if not path.startswith(prefix):
            raise ValueError(f"{path} is outside {self.root}")
        return path[len(prefix) :]

    # -- reads ---------------------------------------------------------------------------------
    def read(self, key: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` when absent."""
        return self.fs.cat_file(self.path(key))

    def read_many(self, keys: list[str]) -> dict[str, bytes]:
        """Several objects at once (concurrently where the store allows); absent ones omitted."""
        if not keys:
            return {}
        got = self.fs.cat([self.path(k) for k in keys], on_error="omit")
        return {self._key_of(p): v for p, v in got.items() if isinstance(v, bytes)}

    def open(self, key: str) -> IO[bytes]:
        return self.fs.open(self.path(key), "rb")

    def find(self, prefix: str = "") -> dict[str, ObjectInfo]:
        """Every object under ``prefix`` (recursively), by key."""
        try:
            found = self.fs.find(self.path(prefix), detail=True)
        except (FileNotFoundError, NotADirectoryError):
            if not self.missing_root_is_empty:
                raise  # s3: an absent prefix lists as empty; this is an absent bucket
            return {}
        out = {}
        for path, info in found.items():
            if info.get("type") == "directory":
                continue
            key = self._key_of(path)
            if prefix and not (key == prefix or key.startswith(prefix + "/")):
                continue  # "bases/tiny" must not match "bases/tiny2"
            out[key] = ObjectInfo(key, int(info.get("size") or 0), _mtime(info))
        return out

    def listdir(self, prefix: str) -> list[str]:
        """Names of the immediate children (objects and folders) of ``prefix``."""
        try:
            paths = self.fs.ls(self.path(prefix), detail=False)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in paths]

    # -- writes (subclasses) -------------------------------------------------------------------
    def upload(self, key: str, src: IO[bytes], on_chunk: Callable[[], None] | None = None):
        """Stream ``src`` to ``key`` (overwriting); ``(sha256_hex, size)`` of what was sent."""
        raise NotImplementedError

    def write(self, key: str, data: bytes) -> None:
        """Overwrite ``key`` (readers see the old or the new bytes, never a mix)."""
        raise NotImplementedError

    def create(self, key: str, data: bytes) -> bool:
        raise NotImplementedError

    def read_versioned(self, key: str) -> tuple[bytes, str] | None:
        raise NotImplementedError

    def swap(self, key: str, data: bytes, token: str | None) -> bool:
        """Write ``data`` if ``key`` still has version ``token`` (None: if it does not exist)."""
        raise NotImplementedError

    def delete(self, keys: list[str]) -> None:
        """Delete objects; absent ones are ignored."""
        raise NotImplementedError


class LocalBackend(Backend):
    """``file://`` registries (any POSIX file system with hard links and ``flock``)."""

    def _os(self, key: str) -> Path:
        return Path(self.path(key))

    def _tmp(self, target: Path) -> Path:
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.parent / f".tmp-{target.name}-{uuid.uuid4().hex[:12]}"

    def upload(self, key, src, on_chunk=None):
        target = self._os(key)
        tmp = self._tmp(target)
        h, n = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK):
                    h.update(chunk)
                    n += len(chunk)
                    dst.write(chunk)
                    if on_chunk:
                        on_chunk()
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return h.hexdigest(), n

    def write(self, key, data):
        target = self._os(key)
        tmp = self._tmp(target)
        try:
            _write_synced(tmp, data)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def create(self, key, data):
        target = self._os(key)
        tmp = self._tmp(target)
        try:
            _write_synced(tmp, data)
            os.link(tmp, target)  # atomic, fails if target exists; content already complete
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def read_versioned(self, key):
        try:
            data = self._os(key).read_bytes()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()

    def swap(self, key, data, token):
        if token is None:
            return self.create(key, data)
        target = self._os(key)
        with _flock(target.parent / f".{target.name}.lock"):
            current = self.read_versioned(key)
            if current is None or current[1] != token:
                return False
            self.write(key, data)
            return True

    def delete(self, keys):
        for key in keys:
            self._os(key).unlink(missing_ok=True)

    def listdir(self, prefix):
        try:
            return os.listdir(self._os(prefix))
        except (FileNotFoundError, NotADirectoryError):
            return []


_PROBED: set[tuple[str, str]] = set()


class S3Backend(Backend):
    """``s3://bucket/prefix`` registries through s3fs (conditional writes need botocore>=1.35).

    Some S3-compatible stores ignore ``If-None-Match`` / ``If-Match`` and would silently turn
    create-only writes into overwrites; before the first conditional write to a bucket the
    backend checks that the store honours both, and refuses to write otherwise.
    """

    missing_root_is_empty = False

    def _require_conditional_writes(self) -> None:
        bucket = self.root.split("/", 1)[0]
        endpoint = str(self.fs.endpoint_url or self.fs.client_kwargs.get("endpoint_url") or "aws")
        if (endpoint, bucket) in _PROBED:
            return
        probe = f"{self.root}/_ldp/probe-{uuid.uuid4().hex}"
        _, key, _ = self.fs.split_path(probe)
        self.fs.pipe_file(probe, b"1", mode="create")
        try:
            try:
                self.fs.pipe_file(probe, b"2", mode="create")
                honoured = False
            except FileExistsError:
                honoured = True
            if honoured:
                try:
                    self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=b"3", IfMatch='"0"')
                    honoured = False
                except OSError as exc:
                    honoured = _s3_code(exc) in _S3_CONFLICT
        finally:
            self.fs.rm_file(probe)
        if not honoured:
            raise LdpError(
                f"the S3 store behind {self.url} ignores conditional writes (If-None-Match / "
                "If-Match); the registry needs them to hand out versions and move aliases safely"
            )
        _PROBED.add((endpoint, bucket))

    def upload(self, key, src, on_chunk=None):
        h, n = hashlib.sha256(), 0
        with self.fs.open(self.path(key), "wb") as dst:  # single PUT or multipart, by size
            while chunk := src.read(CHUNK):
                h.update(chunk)
                n += len(chunk)
                dst.write(chunk)
                if on_chunk:
                    on_chunk()
        return h.hexdigest(), n

    def write(self, key, data):
        self.fs.pipe_file(self.path(key), data)

    def create(self, key, data):
        self._require_conditional_writes()
        try:
            self.fs.pipe_file(self.path(key), data, mode="create")  # If-None-Match: *
            return True
        except FileExistsError:
            return False
        except OSError as exc:
            if _s3_code(exc) in _S3_CONFLICT:
                return False
            raise

    def read_versioned(self, key):
        from fsspec.asyn import sync

        bucket, k, _ = self.fs.split_path(self.path(key))

        async def get() -> tuple[bytes, str]:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=k)
            try:
                return await resp["Body"].read(), resp["ETag"]
            finally:
                resp["Body"].close()

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def swap(self, key, data, token):
        if token is None:
            return self.create(key, data)
        self._require_conditional_writes()
        bucket, k, _ = self.fs.split_path(self.path(key))
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=k, Body=data, IfMatch=token)
            return True
        except FileNotFoundError:  # deleted meanwhile
            return False
        except OSError as exc:
            if _s3_code(exc) in _S3_CONFLICT:
                return False
            raise

    def delete(self, keys):
        if keys:
            self.fs.rm([self.path(k) for k in keys])


_S3_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"}


def _s3_code(exc: BaseException) -> str | None:
    cause = exc.__cause__
    response = getattr(cause, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def open_backend(url: str, storage_options: dict[str, Any] | None = None) -> Backend:
    """The backend for ``url`` (``file://``, a plain path, or ``s3://``).

    For S3 the endpoint comes from ``storage_options`` or ``LDP_S3_ENDPOINT_URL``; credentials come
    from botocore's usual chain (environment, profile, instance role) and are never logged.
    """
    import fsspec.core

    options = dict(storage_options or {})
    scheme = urlsplit(url).scheme if "://" in url else "file"
    if scheme == "file":
        fs, root = fsspec.core.url_to_fs(url, **options)
        root = os.path.abspath(os.path.expanduser(root))
        return LocalBackend(fs, root, Path(root).as_uri())
    if scheme in ("s3", "s3a"):
        endpoint = os.environ.get(S3_ENDPOINT_ENV)
        client_kwargs = dict(options.pop("client_kwargs", None) or {})
        if endpoint and "endpoint_url" not in client_kwargs and "endpoint_url" not in options:
            client_kwargs["endpoint_url"] = endpoint
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
        options.setdefault("use_listings_cache", False)  # listings must be fresh for versioning
        try:
            fs, root = fsspec.core.url_to_fs(url, **options)
        except ImportError:
            raise UsageError("s3:// registries need the s3fs package (pip install s3fs)") from None
        if not root.strip("/"):
            raise UsageError(f"registry URL {redact_url(url)!r} names no bucket")
        return S3Backend(fs, root, "s3://" + root.rstrip("/"))
    raise UsageError(
        f"registry URL {redact_url(url)!r}: unsupported protocol {scheme!r} "
        "(supported: file://, s3://; they provide the atomic create and compare-and-swap "
        "the registry relies on)"
    )


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def _flock(lock_path: Path) -> Iterator[None]:
    import fcntl

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _mtime(info: dict[str, Any]) -> float:
    value = info.get("mtime", info.get("LastModified", info.get("last_modified")))
    if value is None:
        return 0.0
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
